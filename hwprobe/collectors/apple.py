"""Apple Silicon: GPU utilisation and memory from ``ioreg``, unified memory from ``vm_stat``.

The command runner is a parameter (``run(argv) -> stdout``), so tests feed captured output.
Nothing here needs sudo: power (powermetrics) is therefore not reported.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from hwprobe.collectors import NotApplicable

Runner = Callable[[list[str]], str]

IOREG = ["ioreg", "-r", "-d", "1", "-w", "0", "-c", "IOAccelerator"]
VM_STAT = ["vm_stat"]
MEMSIZE = ["sysctl", "-n", "hw.memsize"]


def run_command(argv: list[str]) -> str:
    """stdout of argv; raises on a non-zero exit or after 5 s."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=5, check=True).stdout


def parse_ioreg_accelerator(text: str) -> dict[str, Any]:
    """The first IOAccelerator entry: name, util_percent (%), mem_used_bytes (bytes).

    ioreg output can be cut short (a capture, a pipe): missing fields are None.
    """
    entry = text.split("+-o ", 2)
    body = entry[1] if len(entry) > 1 else text
    props: dict[str, str] = {}
    for match in re.finditer(r'^\s*"([^"]+)"\s*=\s*(.*?)\s*$', body, re.MULTILINE):
        props.setdefault(match.group(1), match.group(2))
    stats: dict[str, int] = {}
    for match in re.finditer(r'"([^"]+)"\s*=\s*(-?\d+)', props.get("PerformanceStatistics", "")):
        stats[match.group(1)] = int(match.group(2))
    name = None
    for key in ("model", "IONameMatched"):
        raw = props.get(key)
        if raw:
            # model is a quoted string or <"..."> data; IONameMatched a quoted string
            name = re.sub(r'^[<"]+|[">]+$', "", raw) or None
            break
    if name is None:
        header = re.match(r"^\s*(\S+)", body)
        name = header.group(1) if header else None
    return {
        "name": name,
        "util_percent": float(stats["Device Utilization %"]) if "Device Utilization %" in stats else None,
        "mem_used_bytes": stats.get("In use system memory"),
    }


def parse_vm_stat(text: str) -> dict[str, int | None]:
    """Used, wired and compressed memory in bytes from ``vm_stat`` (page size from its header).

    Used follows Activity Monitor: app memory (anonymous minus purgeable pages) + wired +
    compressed; without the anonymous count (older macOS) active pages stand in for app memory.
    """
    size = re.search(r"page size of (\d+) bytes", text)
    page = int(size.group(1)) if size else None
    pages: dict[str, int] = {}
    for match in re.finditer(r'^"?([^":]+)"?:\s+(\d+)\.?\s*$', text, re.MULTILINE):
        pages[match.group(1).strip()] = int(match.group(2))

    def to_bytes(*keys: str) -> int | None:
        if page is None or any(k not in pages for k in keys):
            return None
        return sum(pages[k] for k in keys) * page

    wired = to_bytes("Pages wired down")
    compressed = to_bytes("Pages occupied by compressor")
    app = None
    if page is not None and "Anonymous pages" in pages:
        app = (pages["Anonymous pages"] - pages.get("Pages purgeable", 0)) * page
    elif page is not None and "Pages active" in pages:
        app = pages["Pages active"] * page
    used = app + wired + compressed if None not in (app, wired, compressed) else None  # type: ignore[operator]
    return {"mem_used_bytes": used, "mem_wired_bytes": wired, "mem_compressed_bytes": compressed}


class AppleCollector:
    """The Apple GPU as accelerator index 0, with the unified memory as its memory."""

    name = "apple"

    def __init__(self, run: Runner | None = None) -> None:
        if run is None:
            if sys.platform != "darwin" or platform.machine() != "arm64":
                raise NotApplicable("not an Apple Silicon Mac")
            run = run_command
        self._run = run
        try:
            self.mem_total_bytes: int | None = int(self._run(MEMSIZE).strip())
        except (OSError, subprocess.SubprocessError, ValueError):
            self.mem_total_bytes = None
        self._name = parse_ioreg_accelerator(self._run(IOREG))["name"]

    def inventory(self) -> dict[str, Any]:
        """One ``apple`` accelerator; uuid, power limit and driver are not exposed by macOS."""
        return {
            "accelerators": [
                {
                    "index": 0,
                    "vendor": "apple",
                    "name": self._name,
                    "uuid": None,
                    "mem_total_bytes": self.mem_total_bytes,
                    "power_limit_watts": None,
                    "parent_uuid": None,
                    "mig_profile": None,
                    "driver": None,
                }
            ]
        }

    def collect(self) -> dict[str, Any]:
        """GPU util (%) and in-use memory (bytes); system used/wired/compressed memory (bytes)."""
        gpu = parse_ioreg_accelerator(self._run(IOREG))
        memory = parse_vm_stat(self._run(VM_STAT))
        return {
            "system": {**memory, "mem_total_bytes": self.mem_total_bytes},
            "gpus": [
                {
                    "index": 0,
                    "uuid": None,
                    "util_percent": gpu["util_percent"],
                    "mem_util_percent": None,
                    "mem_used_bytes": gpu["mem_used_bytes"],
                    "mem_total_bytes": self.mem_total_bytes,
                    "power_watts": None,
                    "power_limit_watts": None,
                    "temp_c": None,
                    "sm_clock_mhz": None,
                    "mem_clock_mhz": None,
                    "throttle_reasons": None,
                    "ecc_errors": None,
                    "xid_errors": None,
                    "processes": None,
                }
            ],
        }
