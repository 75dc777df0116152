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
    # NVML GPU Performance Monitoring (GPM, Hopper and later; None elsewhere): what the SMs did,
    # where util_percent only says whether any kernel ran. MIG devices: their GPU instance's share.
    Metric("sm_util_percent", "%", "SM activity (GPM)", percent=True),
    Metric("sm_occupancy_percent", "%", "SM occupancy (GPM)", percent=True),
    Metric("tensor_util_percent", "%", "Tensor core activity (GPM)", percent=True),
    Metric("dram_bw_util_percent", "%", "Memory bandwidth used (GPM)", percent=True),
    Metric("fp16_util_percent", "%", "FP16 pipe activity, non-tensor (GPM)", percent=True),
    Metric("fp32_util_percent", "%", "FP32 pipe activity, non-tensor (GPM)", percent=True),
    Metric("fp64_util_percent", "%", "FP64 pipe activity, non-tensor (GPM)", percent=True),
    Metric("pcie_tx_bytes_per_s", "B/s", "PCIe out (GPM)"),
    Metric("pcie_rx_bytes_per_s", "B/s", "PCIe in (GPM)"),
    Metric("nvlink_tx_bytes_per_s", "B/s", "NVLink out (GPM)"),
    Metric("nvlink_rx_bytes_per_s", "B/s", "NVLink in (GPM)"),
    # Health: share of each window the clocks were held down, and memory and driver faults.
    Metric("thermal_slowdown_percent", "%", "Clocks held down by heat", percent=True),
    Metric("power_brake_percent", "%", "Clocks held down by the power brake", percent=True),
    Metric("power_cap_percent", "%", "Clocks held down by the power cap", percent=True),
    Metric("ecc_uncorrected_errors", "", "Volatile uncorrectable ECC errors", kind="last", integer=True),
    Metric("xid_last", "", "Latest XID code (0: none since the agent started)", kind="last", integer=True),
    Metric("retired_pages", "", "Retired memory pages", kind="last", integer=True),
    Metric("retired_pages_pending", "", "Page retirement pending a reset (1: yes)", kind="last", integer=True),
    Metric("remapped_rows_correctable", "", "Rows remapped for correctable errors", kind="last", integer=True),
    Metric("remapped_rows_uncorrectable", "", "Rows remapped for uncorrectable errors", kind="last", integer=True),
    Metric("row_remap_pending", "", "Row remapping pending a reset (1: yes)", kind="last", integer=True),
    Metric("row_remap_failed", "", "Row remapping failed (1: yes)", kind="last", integer=True),
    Metric("nvml_errors", "", "NVML errors reading the device since the agent started", kind="last", integer=True),
    Metric("nvml_last_error", "", "Latest NVML error code (0: none)", kind="last", integer=True),
)

SYSTEM_GAUGES = tuple(m.name for m in SYSTEM_METRICS if m.kind == "gauge")
GPU_GAUGES = tuple(m.name for m in GPU_METRICS if m.kind == "gauge")
STATS = ("min", "mean", "max")
