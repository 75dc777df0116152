"""The guarded collector set: quiet about missing hardware, loud (once) about broken."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from hwprobe.collectors import Collector, NotApplicable, Probe, build_collectors


class Fine:
    name = "fine"

    def inventory(self) -> dict[str, Any]:
        return {"hostname": "h", "accelerators": [{"index": 0, "name": "a"}]}

    def collect(self) -> dict[str, Any]:
        return {"system": {"cpu_percent": 5.0, "mem_used_bytes": None}, "gpus": [{"index": 0, "uuid": "a"}]}


class Broken:
    name = "broken"

    def inventory(self) -> dict[str, Any]:
        return {"accelerators": [{"index": 0, "name": "b"}]}

    def collect(self) -> dict[str, Any]:
        raise RuntimeError("sensor fell off")


class Second:
    name = "second"

    def inventory(self) -> dict[str, Any]:
        return {"accelerators": [{"index": 0, "name": "c"}]}

    def collect(self) -> dict[str, Any]:
        return {"system": {"mem_used_bytes": 7, "cpu_percent": None}, "gpus": [{"index": 0, "uuid": "c"}]}


def absent() -> Collector:
    raise NotApplicable("no such hardware here")


def test_a_collector_without_hardware_is_skipped_with_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="hwprobe"):
        built = build_collectors((("fine", Fine), ("absent", absent)))
    assert [c.name for c in built] == ["fine"]
    [record] = caplog.records
    assert record.levelno == logging.INFO and "no such hardware here" in record.getMessage()


def test_a_collector_that_fails_to_start_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    def explode() -> Collector:
        raise OSError("permission denied")

    with caplog.at_level(logging.DEBUG, logger="hwprobe"):
        assert build_collectors((("explode", explode),)) == []
    assert caplog.records[0].levelno == logging.WARNING


def test_a_broken_collector_is_logged_once_and_never_stops_the_others(caplog: pytest.LogCaptureFixture) -> None:
    probe = Probe([Fine(), Broken(), Second()])
    with caplog.at_level(logging.DEBUG, logger="hwprobe"):
        snapshots = [probe.collect() for _ in range(5)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "sensor fell off" in warnings[0].getMessage()
    last = snapshots[-1]
    # the broken collector's device keeps its index slot; the next collector's device is index 2
    assert [(g["index"], g["uuid"]) for g in last["gpus"]] == [(0, "a"), (2, "c")]
    # a later None never erases an earlier value, a later value fills an earlier None
    assert last["system"] == {"cpu_percent": 5.0, "mem_used_bytes": 7}


def test_accelerators_are_numbered_in_the_order_of_the_collectors() -> None:
    inventory = Probe([Fine(), Broken(), Second()]).inventory()
    assert [(a["index"], a["name"]) for a in inventory["accelerators"]] == [(0, "a"), (1, "b"), (2, "c")]
    assert inventory["hostname"] == "h"
