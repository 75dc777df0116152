"""Windows of 1 s snapshots folded into design.md samples."""

from __future__ import annotations

from typing import Any

from hwprobe.aggregate import Window
from hwprobe.schema import GPU_METRICS, SYSTEM_METRICS


def snap(
    cpu: float | None,
    util: float | None,
    reasons: int | None,
    cores: list[float],
    procs: list[dict[str, Any]] | None = None,
    ecc: int | None = 0,
) -> dict[str, Any]:
    return {
        "system": {"cpu_percent": cpu, "mem_total_bytes": 100, "cpu_per_core_percent": cores},
        "gpus": [
            {
                "index": 0,
                "uuid": "GPU-a",
                "util_percent": util,
                "throttle_reasons": reasons,
                "ecc_errors": ecc,
                "processes": procs,
            }
        ],
    }


def test_a_window_closed_as_it_starts_still_has_a_length_the_server_accepts() -> None:
    window = Window(1000.0)
    window.add(snap(10.0, 0.0, 1, [0.0, 20.0]))
    assert window.close(1000.0002)["interval_s"] == 0.001  # the server refuses interval_s <= 0


def test_it_reduces_gauges_to_min_mean_max_over_the_values_that_were_read() -> None:
    window = Window(1000.0)
    window.add(snap(10.0, 0.0, 1, [0.0, 20.0]))
    window.add(snap(None, 50.0, 4, [10.0, 40.0]))
    window.add(snap(30.0, 100.0, None, [20.0, 60.0]))
    sample = window.close(1010.0)
    assert (sample["ts"], sample["interval_s"], sample["count"]) == (1010.0, 10.0, 3)
    assert sample["system"]["cpu_percent"] == {"min": 10.0, "mean": 20.0, "max": 30.0}
    assert sample["gpus"][0]["util_percent"] == {"min": 0.0, "mean": 50.0, "max": 100.0}
    assert sample["system"]["cpu_per_core_percent"] == [10.0, 40.0]


def test_it_reports_none_for_a_gauge_that_was_never_read() -> None:
    window = Window(0.0)
    window.add(snap(None, None, None, []))
    sample = window.close(1.0)
    assert sample["system"]["cpu_percent"] is None
    assert sample["system"]["load1"] is None
    assert sample["gpus"][0]["power_watts"] is None
    assert sample["gpus"][0]["throttle_reasons"] is None


def test_it_ors_throttle_reasons_and_keeps_the_latest_last_value() -> None:
    window = Window(0.0)
    window.add(snap(1.0, 1.0, 1, [1.0], ecc=2))
    window.add(snap(1.0, 1.0, 4, [1.0], ecc=3))
    window.add(snap(1.0, 1.0, None, [1.0], ecc=None))
    gpu = window.close(3.0)["gpus"][0]
    assert gpu["throttle_reasons"] == 5
    assert gpu["ecc_errors"] == 3


def test_it_reports_the_processes_of_the_last_snapshot() -> None:
    window = Window(0.0)
    window.add(snap(1.0, 1.0, 0, [1.0], procs=[{"pid": 1}]))
    window.add(snap(1.0, 1.0, 0, [1.0], procs=[{"pid": 2}]))
    assert window.close(2.0)["gpus"][0]["processes"] == [{"pid": 2}]


def test_its_sample_carries_every_schema_metric() -> None:
    window = Window(0.0)
    window.add(snap(1.0, 1.0, 0, [1.0]))
    sample = window.close(1.0)
    assert {m.name for m in SYSTEM_METRICS} | {"cpu_per_core_percent"} == set(sample["system"])
    assert {m.name for m in GPU_METRICS} | {"index", "uuid", "processes"} == set(sample["gpus"][0])


def test_the_rounded_mean_never_leaves_the_min_max_range() -> None:
    window = Window(0.0)
    for _ in range(3):
        window.add({"system": {"load1": 0.12255859375}, "gpus": []})
    stats = window.close(3.0)["system"]["load1"]
    assert stats["min"] <= stats["mean"] <= stats["max"]
