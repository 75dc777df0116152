"""POST /api/v1/ingest: authentication, idempotence and refusal of bad batches."""

from __future__ import annotations

import json
import time

import pytest

from conftest import make_batch, make_sample
from dashboard.fleet.models import Accelerator, AgentToken, GpuSample, Machine, MachineState, SystemSample

URL = "/api/v1/ingest"


def post(client, token, body, **extra):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}", **extra)


def stored(machine):
    return SystemSample.objects.filter(machine=machine).count(), GpuSample.objects.filter(machine=machine).count()


def seqs(machine) -> list[int]:
    return list(SystemSample.objects.filter(machine=machine).order_by("seq").values_list("seq", flat=True))


@pytest.mark.django_db
def test_it_stores_a_batch_in_typed_columns(client, machine, agent_token):
    r = post(client, agent_token, make_batch([1, 2, 3]))
    assert r.status_code == 200, r.content
    assert r.json() == {"accepted": 3, "duplicates": 0, "last_seq": 3}
    assert stored(machine) == (3, 6)
    row = SystemSample.objects.get(machine=machine, seq=2)
    assert row.cpu_percent_mean == 25.0 and row.cpu_percent_max == 30.0
    gpu = GpuSample.objects.get(machine=machine, seq=2, gpu_index=1)
    assert gpu.power_watts_mean == 350 and gpu.mem_total_bytes == 85520809984


@pytest.mark.django_db
def test_it_records_inventory_latest_values_and_last_seen(client, machine, agent_token):
    post(client, agent_token, make_batch([1, 2]))
    machine.refresh_from_db()
    assert machine.cpu_model.startswith("AMD EPYC") and machine.cpu_threads == 128
    assert machine.is_online()
    assert machine.latest["seq"] == 2
    assert machine.latest["gpus"][0]["processes"][0]["user"] == "alice"
    assert [a.name for a in Accelerator.objects.filter(machine=machine)] == ["NVIDIA H100 80GB HBM3"] * 2


@pytest.mark.django_db
def test_a_replayed_batch_is_stored_once(client, machine, agent_token):
    batch = make_batch([1, 2, 3])
    post(client, agent_token, batch)
    r = post(client, agent_token, batch)
    assert r.json() == {"accepted": 0, "duplicates": 3, "last_seq": 3}
    overlapping = make_batch([3, 4])
    assert post(client, agent_token, overlapping).json() == {"accepted": 1, "duplicates": 1, "last_seq": 4}
    assert stored(machine) == (4, 8)


@pytest.mark.django_db
def test_it_refuses_missing_unknown_and_revoked_tokens(client, machine, agent_token):
    batch = make_batch([1])
    assert client.post(URL, data=json.dumps(batch), content_type="application/json").status_code == 401
    assert post(client, "hwa_deadbeef_nope", batch).status_code == 401
    token = machine.tokens.get()
    token.revoke()
    r = post(client, agent_token, batch)
    assert r.status_code == 401 and "error" in r.json()
    assert stored(machine) == (0, 0)


@pytest.mark.django_db
def test_authenticate_gives_what_select_related_would(client, machine, agent_token):
    # AgentToken.authenticate builds the token, machine and state from one hand-written query.
    machine.worker_policy = {"allow": ["train"]}
    machine.save()
    found = AgentToken.authenticate(agent_token)
    assert found.machine.pk == machine.pk and found.machine.name == machine.name
    with pytest.raises(MachineState.DoesNotExist):
        _ = found.machine.state  # never reported: no state row yet
    post(client, agent_token, make_batch([1, 2]))
    found = AgentToken.authenticate(agent_token)
    assert found.machine.state.last_seq == 2 and found.machine.last_seq == 2
    assert found.machine.state.machine is found.machine
    # Datetimes are converted as the ORM converts them (SQLite returns text) and aware.
    assert found.machine.last_seen_at.tzinfo is not None and found.created_at.tzinfo is not None
    assert found.machine.worker_policy == {"allow": ["train"]}  # deferred, loaded when read
    assert found.machine.state.latest["seq"] == 2  # deferred too
    assert AgentToken.authenticate(agent_token + "x") is None
    assert AgentToken.authenticate("hwa_zzzzzzzz_x") is None


@pytest.mark.django_db
def test_a_token_writes_only_its_own_machine(client, machine, agent_token):
    other = Machine.objects.create(name="gpu-02")
    post(client, agent_token, make_batch([1]))
    assert stored(other) == (0, 0)
    assert stored(machine) == (1, 2)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda b: b["samples"][0]["gpus"][0]["util_percent"].update(max=101), "samples[0].gpus[0].util_percent"),
        (lambda b: b["samples"][0]["system"]["mem_used_bytes"].update(min=-1), "samples[0].system.mem_used_bytes"),
        (lambda b: b["samples"][0]["system"]["cpu_percent"].update(mean=90, max=20), "samples[0].system.cpu_percent"),
        (lambda b: b["samples"][0].update(ts=time.time() + 86400), "samples[0].ts"),
        (lambda b: b["samples"][0].update(seq="7"), "samples[0].seq"),
        (lambda b: b["samples"][0].update(seq=0), "samples[0].seq"),
        (lambda b: b["samples"].append(dict(b["samples"][0])), "samples"),
        (lambda b: b.update(samples=[]), "samples"),
        (lambda b: b["samples"][0]["gpus"][0].update(power_watts="lots"), "samples[0].gpus[0].power_watts"),
    ],
)
def test_it_refuses_a_bad_batch_with_a_message_and_stores_nothing(client, machine, agent_token, mutate, where):
    post(client, agent_token, make_batch([1]))
    batch = make_batch([2, 3])
    mutate(batch)
    r = post(client, agent_token, batch)
    assert r.status_code == 400, r.content
    assert r.json()["error"].startswith(where), r.json()
    assert stored(machine) == (1, 2)  # the good sample stored earlier is untouched


@pytest.mark.django_db
@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_it_refuses_nan_and_infinity(client, machine, agent_token, text):
    body = json.dumps(make_batch([1])).replace('"mean": 25.0', f'"mean": {text}', 1)
    r = post(client, agent_token, body)
    assert r.status_code == 400
    assert "samples[0].system.cpu_percent.mean" in r.json()["error"]


@pytest.mark.django_db
def test_it_refuses_malformed_json(client, machine, agent_token):
    r = post(client, agent_token, b'{"samples": [')
    assert r.status_code == 400 and "JSON" in r.json()["error"]


@pytest.mark.django_db
def test_it_refuses_an_oversized_body_with_413(client, machine, agent_token, settings):
    settings.INGEST_MAX_BYTES = 10_000
    r = post(client, agent_token, make_batch(range(1, 40)))
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert stored(machine) == (0, 0)


@pytest.mark.django_db
def test_fields_the_agent_could_not_read_are_stored_as_null(client, machine, agent_token):
    sample = make_sample(1, gpus=1)
    sample["gpus"][0].update(util_percent=None, power_watts=None, temp_c=None)
    r = post(client, agent_token, {"samples": [sample]})
    assert r.status_code == 200, r.content
    gpu = GpuSample.objects.get(machine=machine)
    assert gpu.util_percent_mean is None and gpu.mem_used_bytes_mean == 40e9


@pytest.mark.django_db
def test_the_spool_drop_count_reaches_the_machine(client, machine, agent_token):
    batch = make_batch([5])
    batch["dropped"] = 17
    post(client, agent_token, batch)
    machine.refresh_from_db()
    assert machine.spool_dropped == 17


@pytest.mark.django_db
def test_a_refused_batch_is_recorded_for_the_page_and_the_agents_count_arrives_with_the_next(
    client, machine, agent_token
):
    post(client, agent_token, make_batch([1, 2]))
    bad = make_batch([3])
    bad["samples"][0]["ts"] = "soon"
    r = post(client, agent_token, bad)
    assert r.status_code == 400 and r.json()["error"].startswith("samples[0].ts")
    machine.refresh_from_db()
    assert machine.last_refusal.startswith("400: samples[0].ts") and machine.last_refusal_at is not None
    assert seqs(machine) == [1, 2] and machine.last_seq == 2, "what was stored stays, the refusal adds nothing"

    later = make_batch([4])
    later["refused"] = 1  # the agent set seq 3 aside
    assert post(client, agent_token, later).status_code == 200
    older = make_batch([5])
    older["refused"] = 0  # a batch that waited longer (a replay) carries an older count
    assert post(client, agent_token, older).status_code == 200
    machine.refresh_from_db()
    assert machine.spool_refused == 1 and seqs(machine) == [1, 2, 4, 5]


@pytest.mark.django_db
def test_a_refusal_is_recorded_for_a_machine_that_never_stored_a_batch(client, machine, agent_token):
    assert post(client, agent_token, b"{not json").status_code == 400
    state = MachineState.objects.get(machine=machine)
    assert state.last_refusal.startswith("400: ") and state.last_seen_at is None and state.last_seq == 0


@pytest.mark.django_db
def test_inventory_fields_the_agent_could_not_read_may_be_null(client, machine, agent_token):
    batch = make_batch([1], gpus=1)
    batch["inventory"].update(os=None, cpu_model=None)
    batch["inventory"]["accelerators"][0]["name"] = None
    batch["samples"][0]["gpus"][0]["processes"] = None
    assert post(client, agent_token, batch).status_code == 200
    machine.refresh_from_db()
    assert machine.os == "" and machine.accelerators.get().name == ""


@pytest.mark.django_db
def test_token_counts_are_stored_once_with_the_job_id_the_agent_reported(client, machine, agent_token):
    from dashboard.fleet.models import ThroughputSample

    batch = make_batch([1])
    batch["samples"][0]["tokens"] = [
        {"job_id": 41, "source": "progress", "train": 5120},
        {"job_id": None, "source": "report", "generated": 7},
    ]
    assert post(client, agent_token, batch).status_code == 200
    post(client, agent_token, batch)  # replayed
    rows = {r.source: r for r in ThroughputSample.objects.all()}
    assert len(rows) == 2
    assert (rows["progress"].job_key, rows["progress"].train_tokens) == (41, 5120)
    assert rows["report"].job_key == 0
    bad = make_batch([2])
    bad["samples"][0]["tokens"] = [{"source": "report", "generated": -1}]
    assert post(client, agent_token, bad).status_code == 400


@pytest.mark.django_db
def test_a_reinstalled_agents_loss_counts_start_again_with_its_new_spool(client, machine, agent_token):
    old = make_batch([1])
    old.update(spool_id="spool-a", dropped=100, refused=3)
    post(client, agent_token, old)
    fresh = make_batch([1])
    fresh.update(spool_id="spool-b", dropped=0, refused=0)
    post(client, agent_token, fresh)
    machine.refresh_from_db()
    assert (machine.spool_dropped, machine.spool_refused) == (0, 0)
    later = make_batch([2])
    later.update(spool_id="spool-b", dropped=5, refused=1)
    post(client, agent_token, later)
    machine.refresh_from_db()
    assert (machine.spool_dropped, machine.spool_refused) == (5, 1), "kept at 100 and 3 these would not show"


@pytest.mark.django_db
def test_a_reinstalled_agent_restarting_at_seq_1_loses_nothing(client, machine, agent_token):
    first = make_batch([1, 2, 3])
    first["spool_id"] = "spool-a"
    assert post(client, agent_token, first).json()["accepted"] == 3
    fresh = make_batch([1, 2])  # a wiped state folder: a new spool numbers from 1 again
    fresh["spool_id"] = "spool-b"
    assert post(client, agent_token, fresh).json() == {"accepted": 2, "duplicates": 0, "last_seq": 2}
    assert post(client, agent_token, fresh).json()["duplicates"] == 2  # its replays still dedupe
    nxt = make_batch([3])
    nxt["spool_id"] = "spool-b"
    assert post(client, agent_token, nxt).json()["accepted"] == 1
    assert list(SystemSample.objects.filter(machine=machine).order_by("seq").values_list("seq", flat=True)) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
