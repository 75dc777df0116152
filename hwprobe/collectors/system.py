"""CPU, memory, swap, disk and network of the host, through psutil."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

# Loopback traffic is the host talking to itself (including this agent's own tests and local
# sinks): it says nothing about the machine's network load.
_LOOPBACK_PREFIXES = ("lo",)


def parse_os_release(text: str) -> str | None:
    """The distribution name (PRETTY_NAME, else NAME + VERSION_ID) from /etc/os-release text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"').strip("'")
    if fields.get("PRETTY_NAME"):
        return fields["PRETTY_NAME"]
    name = " ".join(v for v in (fields.get("NAME"), fields.get("VERSION_ID")) if v)
    return name or None


def parse_cpu_model(cpuinfo: str) -> str | None:
    """The first ``model name`` (x86) or ``Model``/``Hardware`` (ARM) line of /proc/cpuinfo."""
    fallbacks: list[str] = []
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or not value.strip():
            continue
        if key == "model name":
            return value.strip()
        if key in ("model", "hardware", "cpu model") and not value.strip().isdigit():
            fallbacks.append(value.strip())
    return fallbacks[0] if fallbacks else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def os_description() -> str:
    """E.g. ``Linux 6.1.0-18-amd64 (Debian GNU/Linux 12 (bookworm))`` or ``Darwin 23.1.0 (macOS 14.1)``."""
    base = f"{platform.system()} {platform.release()}".strip()
    distro: str | None = None
    if sys.platform.startswith("linux"):
        text = _read("/etc/os-release") or _read("/usr/lib/os-release")
        distro = parse_os_release(text) if text else None
    elif sys.platform == "darwin":
        version = platform.mac_ver()[0]
        distro = f"macOS {version}" if version else None
    return f"{base} ({distro})" if distro else base


def cpu_model(run: Callable[[list[str]], str] | None = None) -> str | None:
    """The CPU's marketing name, or None when the platform does not say."""
    if sys.platform.startswith("linux"):
        text = _read("/proc/cpuinfo")
        model = parse_cpu_model(text) if text else None
        if model:
            return model
    elif sys.platform == "darwin":
        try:
            out = (run or _run)(["sysctl", "-n", "machdep.cpu.brand_string"]).strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or None


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=5, check=True).stdout


def _rate(now: float | None, before: float | None, seconds: float) -> float | None:
    """Counter delta per second; None without a previous reading or when the counter went back."""
    if now is None or before is None or seconds <= 0 or now < before:
        return None
    return round((now - before) / seconds, 1)


class SystemCollector:
    """Host metrics through ``ps`` (the psutil module, or a stand-in with the same functions)."""

    name = "system"

    def __init__(self, ps: Any = psutil, clock: Callable[[], float] = time.monotonic) -> None:
        self._ps = ps
        self._clock = clock
        self._last: tuple[float, dict[str, float | None]] | None = None
        self._inventory: dict[str, Any] | None = None

    def inventory(self) -> dict[str, Any]:
        """hostname, os, cpu_model, cpu_cores (physical), cpu_threads, mem_total_bytes."""
        if self._inventory is None:
            self._inventory = {
                "hostname": socket.gethostname(),
                "os": os_description(),
                "cpu_model": cpu_model(),
                "cpu_cores": self._ps.cpu_count(logical=False),
                "cpu_threads": self._ps.cpu_count(logical=True),
                "mem_total_bytes": self._ps.virtual_memory().total,
            }
        return dict(self._inventory)

    def _counters(self) -> dict[str, float | None]:
        disk = self._ps.disk_io_counters()  # None on hosts without disks (some containers)
        rx = tx = 0
        try:
            nics = self._ps.net_io_counters(pernic=True)
        except OSError:
            nics = None
        for nic, counters in (nics or {}).items():
            if not nic.startswith(_LOOPBACK_PREFIXES):
                rx += counters.bytes_recv
                tx += counters.bytes_sent
        return {
            "disk_read": disk.read_bytes if disk else None,
            "disk_write": disk.write_bytes if disk else None,
            "net_rx": rx if nics is not None else None,
            "net_tx": tx if nics is not None else None,
        }

    def collect(self) -> dict[str, Any]:
        """One snapshot. Rates (bytes/s) and CPU % are None on the first call: no interval yet."""
        ps = self._ps
        first = self._last is None
        per_core = ps.cpu_percent(interval=None, percpu=True)
        total = ps.cpu_percent(interval=None)
        mem = ps.virtual_memory()
        swap = ps.swap_memory()
        try:
            load1: float | None = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        except OSError:
            load1 = None
        now = self._clock()
        counters = self._counters()
        rates: dict[str, float | None] = dict.fromkeys(counters)
        if self._last is not None:
            seconds = now - self._last[0]
            rates = {k: _rate(v, self._last[1][k], seconds) for k, v in counters.items()}
        self._last = (now, counters)
        return {
            "system": {
                # psutil's first cpu_percent call measures nothing: report "unknown", not 0.
                "cpu_percent": None if first else float(total),
                "cpu_per_core_percent": None if first else [float(p) for p in per_core],
                "load1": load1,
                # total - available counts what programs hold, not the page cache they could
                # get back; psutil's own "used" differs between platforms.
                "mem_used_bytes": mem.total - mem.available,
                "mem_total_bytes": mem.total,
                "swap_used_bytes": swap.used,
                "swap_total_bytes": swap.total,
                "disk_read_bytes_per_s": rates["disk_read"],
                "disk_write_bytes_per_s": rates["disk_write"],
                "net_rx_bytes_per_s": rates["net_rx"],
                "net_tx_bytes_per_s": rates["net_tx"],
                "mem_wired_bytes": None,
                "mem_compressed_bytes": None,
            }
        }
