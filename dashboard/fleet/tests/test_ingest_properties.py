"""Property-based: no input makes ingest fail with a 500 or changes data already stored."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from conftest import make_batch
from dashboard.fleet.models import GpuSample, SystemSample

URL = "/api/v1/ingest"

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


BASE = make_batch([100, 101], ts=1_764_000_000.0)
PATHS = [p for p in _paths(BASE) if p]


def _set(doc, path, value):
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def _snapshot(machine):
    return (
        list(
            SystemSample.objects.filter(machine=machine)
            .order_by("seq")
            .values_list("seq", "cpu_percent_mean", "mem_used_bytes_max")
        ),
        list(
            GpuSample.objects.filter(machine=machine)
            .order_by("seq", "gpu_index")
            .values_list("seq", "util_percent_mean")
        ),
    )


@pytest.fixture
def seeded(client, machine, agent_token):
    r = client.post(
        URL,
        data=json.dumps(make_batch([1, 2, 3])),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {agent_token}",
    )
    assert r.status_code == 200
    return client, machine, agent_token


def _check(client, machine, token, body: bytes):
    before = _snapshot(machine)
    r = client.post(URL, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert r.status_code < 500, r.content
    after = _snapshot(machine)
    assert after[0][:3] == before[0][:3] and after[1][:6] == before[1][:6]  # stored data untouched
    if r.status_code != 200:
        assert after == before  # a refused batch stores nothing
        assert isinstance(r.json()["error"], str) and r.json()["error"]


@pytest.mark.django_db
@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=json_value)
def test_a_mutated_batch_is_stored_or_refused_never_a_500(seeded, path, value):
    client, machine, token = seeded
    doc = copy.deepcopy(BASE)
    _set(doc, path, value)
    _check(client, machine, token, json.dumps(doc).encode())


@pytest.mark.django_db
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=json_value)
def test_any_json_document_is_refused_cleanly(seeded, doc):
    client, machine, token = seeded
    _check(client, machine, token, json.dumps(doc).encode())


@pytest.mark.django_db
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_cleanly(seeded, body):
    client, machine, token = seeded
    _check(client, machine, token, body)
