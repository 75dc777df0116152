"""The fleet simulator: virtual machines enroll and their windows arrive through the agent's client."""

from __future__ import annotations

import json

import pytest

from dashboard.devtools import simulator as simulate
from dashboard.fleet.models import Accelerator, AgentToken, GpuSample, Machine, SystemSample
from dashboard.fleet.payload import parse_batch


def test_every_kind_of_virtual_machine_sends_windows_the_server_accepts():
    models = [simulate.MachineModel(f"sim-{i:04d}", 8, 5.0) for i in range(1, 61)]
    assert {m.workload for m in models} == {"training", "inference", "development", "idle"}
    assert len({m.gpu.name for m in models}) == len(simulate.GPU_MODELS)
    for m in models:
        window = m.window(1_795_698_975.0)
        batch = parse_batch(json.dumps({"inventory": m.inventory(), "samples": [{"seq": 1, **window}]}).encode())
        for gpu in batch.samples[0].gpus:
            # Correlated: an idle board sits at its idle power and clock, a busy one draws more.
            if gpu.util_percent["mean"] == 0:
                assert gpu.power_watts["mean"] == m.gpu.idle_watts and gpu.throttle_reasons == simulate.THROTTLE_IDLE
            else:
                assert gpu.power_watts["mean"] > m.gpu.idle_watts
            assert gpu.power_watts["mean"] <= m.gpu.power_limit_watts


def _seqs(name: str) -> list[int]:
    return list(SystemSample.objects.filter(machine__name=name).order_by("seq").values_list("seq", flat=True))


def test_the_simulator_enrolls_machines_and_their_samples_arrive_in_order(live_server, tmp_path):
    lines: list[str] = []
    tokens = tmp_path / "tokens.json"
    summary = simulate.main(
        live_server.url,
        machines=3,
        gpus=2,
        interval_s=0.5,
        seconds=3.0,
        prefix="t-",
        spool_dir=str(tmp_path / "spool"),
        token_file=str(tokens),
        status_every_s=1.0,
        print_fn=lines.append,
    )

    assert summary["errors"] == 0 and summary["backlog_final"] == 0
    assert summary["accepted"] == summary["windows"] >= 3 * 4
    assert any("backlog" in line and "p99" in line for line in lines)
    names = ["t-0001", "t-0002", "t-0003"]
    assert sorted(Machine.objects.values_list("name", flat=True)) == names
    for name in names:
        seqs = _seqs(name)
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 4
        assert GpuSample.objects.filter(machine__name=name).count() == 2 * len(seqs)
        machine = Machine.objects.get(name=name)
        assert machine.cpu_model and machine.last_seq == len(seqs)
        assert {a.name for a in Accelerator.objects.filter(machine=machine)} <= {
            g.name for g in simulate.GPU_MODELS.values()
        }
    assert AgentToken.objects.count() == 3

    # Again, with a fresh spool folder: the same machines and tokens, and the seqs carry on.
    before = {name: len(_seqs(name)) for name in names}
    again = simulate.main(
        live_server.url,
        machines=3,
        gpus=2,
        interval_s=0.5,
        seconds=1.2,
        prefix="t-",
        spool_dir=str(tmp_path / "fresh-spool"),
        token_file=str(tokens),
        print_fn=lines.append,
    )
    assert again["errors"] == 0 and again["duplicates"] == 0 and again["accepted"] >= 3
    assert AgentToken.objects.count() == 3 and Machine.objects.count() == 3
    for name in names:
        seqs = _seqs(name)
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > before[name]


@pytest.mark.django_db
def test_the_simulate_command_refuses_a_prefix_that_makes_bad_names():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--prefix"):
        call_command("simulate", "--enroll-only", "--prefix", "bad name ")
