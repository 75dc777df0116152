"""AppleCollector over captured ioreg and vm_stat output."""

from __future__ import annotations

import pytest

from hwprobe.collectors import NotApplicable
from hwprobe.collectors.apple import AppleCollector, parse_ioreg_accelerator, parse_vm_stat
from hwprobe.tests.conftest import FIXTURES

IOREG = (
    FIXTURES / "apple_silicon" / "ioreg_IOAccelerator_mbp16_2021_m1_t6000_exelban_stats_1094_excerpt.txt"
).read_text()
VM_STAT = (FIXTURES / "apple_silicon" / "vm_stat_page4096_wazuh_22113_excerpt.txt").read_text()
MEMSIZE = "34359738368\n"  # a 32 GiB machine


def runner(argv: list[str]) -> str:
    return {"ioreg": IOREG, "vm_stat": VM_STAT, "sysctl": MEMSIZE}[argv[0]]


def test_it_reads_gpu_utilisation_and_memory_from_a_truncated_ioreg_capture() -> None:
    gpu = parse_ioreg_accelerator(IOREG)
    assert gpu == {"name": "gpu,t6000", "util_percent": 2.0, "mem_used_bytes": 340983808}


def test_it_reads_memory_with_the_page_size_from_the_vm_stat_header() -> None:
    page = 4096  # the capture is from an Intel Mac; Apple Silicon uses 16384
    memory = parse_vm_stat(VM_STAT)
    assert memory["mem_wired_bytes"] == 715958 * page
    assert memory["mem_compressed_bytes"] == 0
    assert memory["mem_used_bytes"] == (464333 - 11820 + 715958 + 0) * page
    sixteen_k = parse_vm_stat(VM_STAT.replace("page size of 4096", "page size of 16384"))
    assert sixteen_k["mem_wired_bytes"] == 715958 * 16384


def test_it_reports_the_apple_gpu_as_device_zero_with_the_unified_memory() -> None:
    collector = AppleCollector(run=runner)
    [device] = collector.inventory()["accelerators"]
    assert device["index"] == 0 and device["vendor"] == "apple"
    assert device["name"] == "gpu,t6000"
    assert device["mem_total_bytes"] == 34359738368
    snapshot = collector.collect()
    [gpu] = snapshot["gpus"]
    assert gpu["util_percent"] == 2.0
    assert gpu["mem_used_bytes"] == 340983808
    assert gpu["mem_total_bytes"] == 34359738368
    assert gpu["power_watts"] is None  # needs sudo powermetrics: not read, not faked
    assert snapshot["system"]["mem_wired_bytes"] == 715958 * 4096


def test_it_copes_with_missing_fields() -> None:
    assert parse_ioreg_accelerator("") == {"name": None, "util_percent": None, "mem_used_bytes": None}
    assert parse_vm_stat("Pages free: 1.\n")["mem_used_bytes"] is None


def test_it_is_not_applicable_off_apple_silicon() -> None:
    with pytest.raises(NotApplicable, match="Apple Silicon"):
        AppleCollector()
