"""POST /api/v1/ingest with inputs that once answered 500: unstorable text, seq near the database's
limit, and bodies sent without a Content-Length. Each gets a 4xx naming the field, or is stored."""

from __future__ import annotations

import http.client
import io
import json

import pytest

from conftest import make_batch
from dashboard.fleet.models import MachineState, SystemSample
from dashboard.fleet.payload import MAX_BIGINT, MAX_SEQ
from dashboard.fleet.tests.test_agent_end_to_end import Server, free_port

URL = "/api/v1/ingest"


def post(client, token, body, **extra):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}", **extra)


def post_chunked(client, token, body: bytes, terminated: bool = True):
    """As a server that decodes chunks hands it on: no Content-Length, the body in wsgi.input."""
    extra = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(body)}
    if terminated:
        extra["wsgi.input_terminated"] = True
    return client.generic(
        "POST", URL, data=b"", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}", **extra
    )


def stored_seqs(machine) -> list[int]:
    return list(SystemSample.objects.filter(machine=machine).order_by("seq").values_list("seq", flat=True))


def with_spool(batch: dict, spool: str) -> dict:
    batch["spool_id"] = spool
    return batch


@pytest.mark.django_db
@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda b: b.update(agent_version="0.1\x00"), "agent_version"),
        (lambda b: b.update(spool_id="spool\x00"), "spool_id"),
        (lambda b: b["inventory"].update(hostname="gpu\x00"), "inventory.hostname"),
        (lambda b: b["inventory"]["accelerators"][0].update(name="H100\x00"), "inventory.accelerators[0].name"),
        (lambda b: b["samples"][0]["gpus"][0].update(uuid="GPU-\x00"), "samples[0].gpus[0].uuid"),
        (
            lambda b: b["samples"][0]["gpus"][0]["processes"][0].update(name="py\x00thon"),
            "samples[0].gpus[0].processes[0].name",
        ),
    ],
)
def test_a_nul_character_in_any_text_field_is_refused_naming_it(client, machine, agent_token, mutate, where):
    batch = make_batch([1])
    mutate(batch)
    r = post(client, agent_token, batch)
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error.startswith(where) and "NUL" in error, error
    assert stored_seqs(machine) == []


@pytest.mark.django_db
def test_the_text_backslash_u0000_is_not_a_nul_and_is_stored(client, machine, agent_token):
    # parse_batch looks for NUL escapes in the raw body first: an escaped backslash followed by
    # "u0000" matches that search but decodes to six harmless characters.
    batch = make_batch([1])
    batch["samples"][0]["gpus"][0]["processes"][0]["name"] = "C:\\u0000"
    r = post(client, agent_token, batch)
    assert r.status_code == 200, r.content
    assert MachineState.objects.get(pk=machine.pk).latest["gpus"][0]["processes"][0]["name"] == "C:\\u0000"


@pytest.mark.django_db
def test_a_lone_surrogate_is_refused_as_invalid(client, machine, agent_token):
    body = json.dumps(make_batch([1])).replace('"gpu-01.example"', '"gpu-\\ud800"')
    r = post(client, agent_token, body)
    assert r.status_code == 400 and r.json()["error"].startswith("body: is not valid JSON"), r.content
    assert stored_seqs(machine) == []


@pytest.mark.django_db
def test_a_seq_past_the_json_safe_integers_is_refused_naming_it(client, machine, agent_token):
    r = post(client, agent_token, make_batch([MAX_SEQ + 1]))
    assert r.status_code == 400 and r.json()["error"].startswith("samples[0].seq"), r.content
    assert post(client, agent_token, make_batch([2**63 - 1])).status_code == 400


@pytest.mark.django_db
def test_after_the_highest_seq_a_reinstalled_agent_still_reports(client, machine, agent_token):
    assert post(client, agent_token, with_spool(make_batch([MAX_SEQ]), "old")).status_code == 200
    for seqs in ([1, 2], [3]):  # the new spool, then its next batch: once 500 for every later batch
        r = post(client, agent_token, with_spool(make_batch(seqs), "new"))
        assert r.status_code == 200, r.content
    assert r.json() == {"accepted": 1, "duplicates": 0, "last_seq": 3}
    assert stored_seqs(machine) == [MAX_SEQ, MAX_SEQ + 1, MAX_SEQ + 2, MAX_SEQ + 3]


@pytest.mark.django_db
def test_a_spool_whose_seqs_would_pass_the_bigint_limit_gets_409_and_nothing_is_stored(client, machine, agent_token):
    MachineState.objects.update_or_create(
        machine_id=machine.pk, defaults={"last_seq": MAX_BIGINT - 5, "spool_id": "old"}
    )
    r = post(client, agent_token, with_spool(make_batch([1, 2, 3, 4, 5, 6]), "new"))
    assert r.status_code == 409 and r.json()["error"].startswith("seq: "), r.content
    assert stored_seqs(machine) == []
    machine.refresh_from_db()
    assert machine.spool_id == "old"  # the refused batch changed nothing
    assert machine.last_refusal.startswith("409: seq: ") and machine.spool_dropped == 0, "only the refusal is noted"


@pytest.mark.django_db
def test_a_chunked_body_is_read_to_its_end(client, machine, agent_token):
    r = post_chunked(client, agent_token, json.dumps(make_batch([1, 2])).encode())
    assert r.status_code == 200, r.content
    assert stored_seqs(machine) == [1, 2]


@pytest.mark.django_db
def test_a_chunked_body_over_the_limit_gets_413(client, machine, agent_token, settings):
    settings.INGEST_MAX_BYTES = 10_000
    r = post_chunked(client, agent_token, json.dumps(make_batch(range(1, 40))).encode())
    assert r.status_code == 413 and r.json()["error"].startswith("body: "), r.content
    assert stored_seqs(machine) == []


@pytest.mark.django_db
def test_a_chunked_body_a_server_cannot_end_gets_411_saying_why(client, machine, agent_token):
    r = post_chunked(client, agent_token, json.dumps(make_batch([1])).encode(), terminated=False)
    assert r.status_code == 411 and r.json()["error"].startswith("Content-Length: "), r.content


@pytest.mark.integration
def test_gunicorn_hands_a_chunked_batch_over_whole(process_env, machine, agent_token):
    server = Server(process_env, free_port())
    server.start()
    try:
        body = json.dumps(make_batch([1, 2, 3])).encode()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        # An iterable body without Content-Length goes out as Transfer-Encoding: chunked.
        pieces = (body[i : i + 1000] for i in range(0, len(body), 1000))
        conn.request(
            "POST",
            URL,
            body=pieces,
            headers={"Authorization": f"Bearer {agent_token}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()
        assert json.loads(reply.read())["accepted"] == 3
    finally:
        server.stop()
