"""The metrics hwprobe reports: names, units and kinds, read by the agent and the server alike.

A ``gauge`` is sampled every second and sent as ``{"min", "mean", "max"}`` over a window; a
``last`` value is sent once per window. Any value may be ``None``: the field could not be read.
"""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    name: str
    unit: str  # as shown on chart axes
    label: str
    kind: str = "gauge"  # "gauge" (min/mean/max) or "last"
    percent: bool = False  # validated to 0-100
    non_negative: bool = True
    integer: bool = False  # stored as a 64-bit integer (counts, bitmasks, byte totals)


SYSTEM_METRICS: tuple[Metric, ...] = (
    Metric("cpu_percent", "%", "CPU", percent=True),
    Metric("load1", "", "Load (1 min)"),
    Metric("mem_used_bytes", "B", "RAM used"),
    Metric("swap_used_bytes", "B", "Swap used"),
    Metric("disk_read_bytes_per_s", "B/s", "Disk read"),
    Metric("disk_write_bytes_per_s", "B/s", "Disk write"),
    Metric("net_rx_bytes_per_s", "B/s", "Network in"),
    Metric("net_tx_bytes_per_s", "B/s", "Network out"),
    Metric("mem_wired_bytes", "B", "Wired memory"),
    Metric("mem_compressed_bytes", "B", "Compressed memory"),
    Metric("mem_total_bytes", "B", "RAM total", kind="last", integer=True),
    Metric("swap_total_bytes", "B", "Swap total", kind="last", integer=True),
)

GPU_METRICS: tuple[Metric, ...] = (
    Metric("util_percent", "%", "GPU utilisation", percent=True),
    Metric("mem_util_percent", "%", "Memory controller busy", percent=True),
    Metric("mem_used_bytes", "B", "GPU memory used"),
    Metric("power_watts", "W", "Power draw"),
    Metric("temp_c", "°C", "Temperature", non_negative=False),
    Metric("sm_clock_mhz", "MHz", "SM clock"),
    Metric("mem_clock_mhz", "MHz", "Memory clock"),
    Metric("mem_total_bytes", "B", "GPU memory total", kind="last", integer=True),
    Metric("power_limit_watts", "W", "Power limit", kind="last"),
    Metric("throttle_reasons", "", "Clock throttle reasons (NVML bitmask)", kind="last", integer=True),
    Metric("ecc_errors", "", "Volatile ECC errors", kind="last", integer=True),
    Metric("xid_errors", "", "XID events", kind="last", integer=True),
)

SYSTEM_GAUGES = tuple(m.name for m in SYSTEM_METRICS if m.kind == "gauge")
GPU_GAUGES = tuple(m.name for m in GPU_METRICS if m.kind == "gauge")
STATS = ("min", "mean", "max")
