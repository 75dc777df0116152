"""The drive's read speed is measured once and kept in the agent's state folder."""

from __future__ import annotations

import json

from hwprobe.collectors import Probe
from hwprobe.collectors.storage import REMEASURE_AFTER_S, measured_once


class Counting:
    """A measurement that counts its calls (the real one writes 256 MiB)."""

    def __init__(self, speed: float | None) -> None:
        self.calls, self.speed = 0, speed

    def __call__(self, directory: str | None) -> dict[str, object]:
        self.calls += 1
        return {"storage_read_bytes_per_s": self.speed, "storage_path": directory, "storage_cache_dropped": True}


def test_a_kept_figure_is_reused_until_it_is_old_or_the_folder_changes(tmp_path):
    state = tmp_path / "state" / "storage.json"
    measure = Counting(2.5e9)
    first = measured_once(str(state), str(tmp_path), measure, now=lambda: 1000.0)
    assert first["storage_read_bytes_per_s"] == 2.5e9 and measure.calls == 1
    assert json.loads(state.read_text())["storage_measured_at"] == 1000.0
    assert measured_once(str(state), str(tmp_path), measure, now=lambda: 2000.0) == first
    assert measure.calls == 1
    measured_once(str(state), str(tmp_path / "models"), measure, now=lambda: 2000.0)
    assert measure.calls == 2  # another folder is another drive, perhaps
    measured_once(str(state), str(tmp_path / "models"), measure, now=lambda: 2000.0 + REMEASURE_AFTER_S)
    assert measure.calls == 3


def test_a_failed_measurement_is_not_kept_and_an_unreadable_file_means_measure_again(tmp_path):
    state = tmp_path / "storage.json"
    assert measured_once(str(state), str(tmp_path), Counting(None))["storage_read_bytes_per_s"] is None
    assert not state.exists()
    state.write_text("{not json")
    assert measured_once(str(state), str(tmp_path), Counting(1e9))["storage_read_bytes_per_s"] == 1e9


def test_the_probe_sends_an_added_fact_with_every_inventory_from_then_on():
    class Only:
        name = "only"

        def inventory(self):
            return {"hostname": "h", "accelerators": []}

        def collect(self):
            return {"system": {}, "gpus": []}

    probe = Probe([Only()])
    assert "storage_read_bytes_per_s" not in probe.inventory()
    probe.add_inventory({"storage_read_bytes_per_s": 3e9})
    assert probe.inventory()["storage_read_bytes_per_s"] == 3e9
