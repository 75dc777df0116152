"""SystemCollector over the real psutil and over a scripted stand-in."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hwprobe.collectors.system import SystemCollector, parse_cpu_model, parse_os_release
from hwprobe.schema import SYSTEM_METRICS


class ScriptedPsutil:
    """The psutil functions SystemCollector calls, with counters that grow by fixed steps."""

    def __init__(self) -> None:
        self.calls = 0

    def cpu_percent(self, interval: Any = None, percpu: bool = False) -> Any:
        return [10.0, 30.0] if percpu else 20.0

    def cpu_count(self, logical: bool = True) -> int:
        return 4 if logical else 2

    def virtual_memory(self) -> Any:
        return SimpleNamespace(total=16_000, available=6_000)

    def swap_memory(self) -> Any:
        return SimpleNamespace(total=2_000, used=500)

    def disk_io_counters(self) -> Any:
        self.calls += 1
        return SimpleNamespace(read_bytes=1_000 * self.calls, write_bytes=4_000 * self.calls)

    def net_io_counters(self, pernic: bool = False) -> Any:
        n = self.calls
        return {
            "lo": SimpleNamespace(bytes_recv=10**9 * n, bytes_sent=10**9 * n),
            "eth0": SimpleNamespace(bytes_recv=300 * n, bytes_sent=100 * n),
        }


def test_it_reports_every_system_metric_on_the_real_host() -> None:
    collector = SystemCollector()
    collector.collect()
    system = collector.collect()["system"]
    assert {m.name for m in SYSTEM_METRICS} <= set(system)
    assert 0 <= system["cpu_percent"] <= 100
    assert system["mem_total_bytes"] > system["mem_used_bytes"] > 0
    assert len(system["cpu_per_core_percent"]) == collector.inventory()["cpu_threads"]
    assert system["mem_wired_bytes"] is None  # Apple only


def test_it_reports_rates_from_counter_deltas_and_none_on_the_first_snapshot() -> None:
    clock = iter([100.0, 102.0])
    collector = SystemCollector(ps=ScriptedPsutil(), clock=lambda: next(clock))
    first = collector.collect()["system"]
    assert first["disk_read_bytes_per_s"] is None and first["net_rx_bytes_per_s"] is None
    assert first["cpu_percent"] is None
    second = collector.collect()["system"]
    assert second["disk_read_bytes_per_s"] == 500.0
    assert second["disk_write_bytes_per_s"] == 2_000.0
    # loopback traffic is left out: only eth0 counts
    assert second["net_rx_bytes_per_s"] == 150.0
    assert second["net_tx_bytes_per_s"] == 50.0
    assert second["cpu_percent"] == 20.0
    assert second["cpu_per_core_percent"] == [10.0, 30.0]
    assert second["mem_used_bytes"] == 10_000
    assert second["swap_used_bytes"] == 500


def test_its_inventory_names_the_host_os_and_cpu() -> None:
    inventory = SystemCollector().inventory()
    assert inventory["hostname"]
    assert inventory["os"].startswith("Linux ")
    assert inventory["cpu_threads"] >= 1
    assert inventory["mem_total_bytes"] > 0


def test_it_reads_the_distribution_from_os_release() -> None:
    text = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
    assert parse_os_release(text) == "Debian GNU/Linux 12 (bookworm)"
    assert parse_os_release('NAME="Ubuntu"\nVERSION_ID="22.04"\n') == "Ubuntu 22.04"


def test_it_reads_the_cpu_model_from_cpuinfo() -> None:
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
    assert parse_cpu_model(x86) == "AMD EPYC 7763 64-Core Processor"
    assert parse_cpu_model("processor\t: 0\nBogoMIPS\t: 50.00\n") is None
