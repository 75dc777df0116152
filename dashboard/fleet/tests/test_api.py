"""The read API, user authentication, enrollment and the OpenAPI document."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from conftest import make_batch
from dashboard.accounts.models import ApiToken
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import AgentToken, Machine
from dashboard.fleet.payload import Batch


@pytest.mark.django_db
def test_machines_lists_inventory_state_and_latest_values(client, machine, viewer):
    store_batch(machine, Batch.model_validate(make_batch([1, 2])))
    Machine.objects.create(name="never-seen")
    client.force_login(viewer)
    body = client.get("/api/v1/machines").json()
    by_name = {m["name"]: m for m in body["machines"]}
    gpu01 = by_name["gpu-01"]
    assert gpu01["online"] is True and gpu01["accelerator_summary"] == "2 × H100 80GB HBM3"
    assert gpu01["latest"]["gpus"][1]["util_percent"] == 50.0
    assert by_name["never-seen"]["online"] is False and by_name["never-seen"]["latest"] is None


@pytest.mark.django_db
def test_a_machine_silent_for_90_seconds_is_offline(machine):
    machine.last_seen_at = timezone.now() - timedelta(seconds=89)
    assert machine.is_online()
    machine.last_seen_at = timezone.now() - timedelta(seconds=91)
    assert not machine.is_online()


@pytest.mark.django_db
def test_reading_needs_a_session_or_a_personal_token(client, machine, viewer):
    assert client.get("/api/v1/machines").status_code == 401
    token = ApiToken.issue(viewer, "grafana")
    r = client.get("/api/v1/machines", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert r.status_code == 200
    ApiToken.objects.filter(user=viewer).update(revoked_at=timezone.now())
    assert client.get("/api/v1/machines", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401


@pytest.mark.django_db
def test_an_agent_token_cannot_read_user_data(client, machine, agent_token):
    assert client.get("/api/v1/machines", HTTP_AUTHORIZATION=f"Bearer {agent_token}").status_code == 401


@pytest.mark.django_db
def test_tokens_are_stored_hashed(machine, viewer):
    agent = machine.issue_token()
    user = ApiToken.issue(viewer)
    stored = list(AgentToken.objects.values_list("prefix", "digest")) + list(
        ApiToken.objects.values_list("prefix", "digest")
    )
    for prefix, digest in stored:
        assert agent not in (prefix, digest) and user not in (prefix, digest)
        assert len(digest) == 64
    assert AgentToken.authenticate(agent).machine == machine
    assert AgentToken.authenticate(agent[:-1] + ("x" if agent[-1] != "x" else "y")) is None


@pytest.mark.django_db
def test_enroll_prints_the_token_on_its_last_line(tmp_path):
    out = StringIO()
    call_command("enroll", "gpu-07", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert AgentToken.authenticate(token).machine.name == "gpu-07"
    with pytest.raises(CommandError, match="already enrolled"):
        call_command("enroll", "gpu-07", stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("enroll", "bad name!", stdout=StringIO())


@pytest.mark.django_db
def test_enroll_if_missing_keeps_a_valid_token_file(tmp_path):
    path = tmp_path / "agent.token"
    call_command("enroll", "local", "--token-file", str(path), "--if-missing", stdout=StringIO())
    first = path.read_text()
    call_command("enroll", "local", "--token-file", str(path), "--if-missing", stdout=StringIO())
    assert path.read_text() == first and AgentToken.objects.count() == 1


@pytest.mark.django_db
def test_the_openapi_document_describes_ingest_and_series(client):
    doc = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/ingest" in doc["paths"]
    assert "/api/v1/machines/{name}/series" in doc["paths"]


@pytest.mark.django_db
def test_machines_come_a_page_at_a_time(client, viewer):
    for i in range(5):
        Machine.objects.create(name=f"m-{i}")
    client.force_login(viewer)
    page = client.get("/api/v1/machines", {"offset": 2, "limit": 2}).json()
    assert page["count"] == 5 and [m["name"] for m in page["machines"]] == ["m-2", "m-3"]
    assert client.get("/api/v1/machines", {"limit": 0}).status_code == 400
