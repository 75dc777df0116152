"""The API's OpenAPI document is valid, says every answer, and the API keeps to it.

The slow test runs schemathesis in process (the WSGI app, no server): generated requests, valid and
invalid, to every operation with a user's token and a machine's token; no answer may be a 5xx or
differ from the document (status code, content type, body schema)."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from openapi_spec_validator import validate

from conftest import make_batch
from dashboard.accounts.models import ApiToken
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.payload import Batch
from dashboard.jobs.models import Job

AGENT_PATHS = ("/api/v1/ingest", "/api/v1/agent/")
MIN_CASES = 2000
# A generated agent batch takes about 0.6 s to draw (its schema has some 80 fields per GPU); the
# ingest's own validation is tested in depth by dashboard/fleet/tests. A few here, the rest elsewhere.
INGEST_CASES = 6


@pytest.fixture
def document(client) -> dict:
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    return r.json()


def operations(document: dict):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


@pytest.mark.django_db
def test_the_document_is_valid_openapi_with_every_reference_resolved(client, document):
    validate(document)  # openapi-spec-validator: raises on an invalid document or an unresolvable $ref
    assert client.get("/api/v1/openapi.json").json() == document, "the same document every time"
    text = json.dumps(document)
    assert "#/$defs/" not in text and '"$defs"' not in text
    assert {"Sample", "Inventory", "Error"} <= set(document["components"]["schemas"])


@pytest.mark.django_db
def test_every_operation_documents_its_error_answers(document):
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert "400" in responses and "401" in responses, (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)
        for status, answer in responses.items():
            if status.startswith("4"):
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    cancel = document["paths"]["/api/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    assert {"403", "409"} <= set(cancel)
    assert {"409", "411", "413"} <= set(document["paths"]["/api/v1/ingest"]["post"]["responses"])


@pytest.mark.django_db
def test_limits_are_documented_as_enforced(document):
    for path in ("/api/v1/machines", "/api/v1/jobs"):
        limit = next(p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "limit")
        assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000), path


@pytest.fixture
def fleet(machine, admin_user, settings):
    """A machine with a window and an inventory, a job, and the two tokens schemathesis sends."""
    settings.API_TOKEN_RATE_PER_MIN = 0  # thousands of calls in a few minutes: that is the point here
    store_batch(machine, Batch.model_validate(make_batch([1, 2])))
    Job.objects.create(owner=admin_user, name="seeded", kind="train", argv=["python", "x.py"], gpus=0)
    return {"user": ApiToken.issue(admin_user, "schemathesis"), "agent": machine.issue_token()}


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 3 minutes on an idle 2-core machine; twice that when it is shared
@pytest.mark.django_db
def test_schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_describe(fleet):
    import schemathesis

    # Like Django's test client: keep the test's connection (and its transaction) across requests.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())
        counts, seconds, operations = _run(schema, fleet)
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)
    total = sum(n for key, n in counts.items() if not key.startswith("status"))
    statuses = {k: v for k, v in sorted(counts.items()) if k.startswith("status")}
    print(
        f"\nschemathesis: {total} cases over {operations} operations in {seconds:.0f} s, "
        f"0 server errors, 0 schema violations; answers {statuses}"
    )
    assert len({k for k in counts if not k.startswith("status")}) == operations
    assert total >= MIN_CASES


def _run(schema, fleet) -> tuple[Counter[str], float, int]:
    """Positive and negative cases for every operation; fails at the first check that fails."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    # Positive and negative cases, spread evenly over the other operations, with one to spare.
    per_operation = -(-(MIN_CASES - 2 * INGEST_CASES) // (2 * (len(operations) - 1))) + 1
    counts: Counter[str] = Counter()
    started = time.monotonic()
    for operation in operations:
        agent = operation.path.startswith(tuple(p.removeprefix("/api/v1") for p in AGENT_PATHS))
        headers = {"Authorization": f"Bearer {fleet['agent' if agent else 'user']}"}
        examples = INGEST_CASES if operation.path == "/ingest" else per_operation
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _exercise(operation, mode, headers, checks, counts, examples)
    return counts, time.monotonic() - started, len(operations)


def _exercise(operation, mode, headers: dict, checks: list, counts: Counter[str], examples: int) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: a failure is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(headers=headers)
        counts[f"{case.method} {case.path}"] += 1
        counts[f"status {response.status_code // 100}xx"] += 1
        case.validate_response(response, checks=checks, headers=headers)

    run()
