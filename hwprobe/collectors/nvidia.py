"""NVIDIA GPUs (and their MIG devices) through NVML.

The NVML source is a parameter: the real ``pynvml`` module (nvidia-ml-py) by default, or a
replay of captured output (:mod:`hwprobe.testing.nvml_replay`) in tests. Every per-field
query goes through :meth:`NvidiaCollector._query`, which turns an NVML error into ``None``.

Efficiency metrics (SM, tensor and DRAM activity) come from NVML's GPU Performance Monitoring
(GPM, Hopper and later): one GPM sample per device per ``collect()``, and the metrics between
the previous sample and this one, so about one collection interval apart. MIG devices are
sampled through their parent with their GPU instance id (``nvmlGpmMigSampleGet``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from hwprobe.collectors import NotApplicable

log = logging.getLogger("hwprobe")

# NVML error codes (stable C API values) that mean "no driver here" rather than "broken".
_NO_DRIVER = {
    9,  # NVML_ERROR_DRIVER_NOT_LOADED
    12,  # NVML_ERROR_LIBRARY_NOT_FOUND
}
# Codes that are an answer, not a fault: the field does not exist on this device.
_QUIET = {
    3,  # NVML_ERROR_NOT_SUPPORTED (e.g. utilisation, power, clocks on a MIG device)
    6,  # NVML_ERROR_NOT_FOUND (an empty MIG slot)
    13,  # NVML_ERROR_FUNCTION_NOT_FOUND (a call this driver is too old for)
}
_TIMEOUT = 10  # NVML_ERROR_TIMEOUT: nvmlEventSetWait_v2 found no event
_XID_CRITICAL_ERROR = 0x0000000000000008  # nvmlEventTypeXidCriticalError
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId of an event that is not tied to a MIG instance
_MAX_EVENTS_PER_POLL = 256  # an event storm must not stall the 1 s loop

PidInfo = Callable[[int], "tuple[str | None, str | None]"]

MIB = 1024 * 1024

# GPM metric (NVML_GPM_METRIC_<name>) -> (our metric, scale to our unit). Rates are MiB/s in NVML.
GPM_METRICS: tuple[tuple[str, str, float], ...] = (
    ("SM_UTIL", "sm_util_percent", 1.0),
    ("SM_OCCUPANCY", "sm_occupancy_percent", 1.0),
    ("ANY_TENSOR_UTIL", "tensor_util_percent", 1.0),
    ("DRAM_BW_UTIL", "dram_bw_util_percent", 1.0),
    ("FP16_UTIL", "fp16_util_percent", 1.0),
    ("FP32_UTIL", "fp32_util_percent", 1.0),
    ("FP64_UTIL", "fp64_util_percent", 1.0),
    ("PCIE_TX_PER_SEC", "pcie_tx_bytes_per_s", MIB),
    ("PCIE_RX_PER_SEC", "pcie_rx_bytes_per_s", MIB),
    ("NVLINK_TOTAL_TX_PER_SEC", "nvlink_tx_bytes_per_s", MIB),
    ("NVLINK_TOTAL_RX_PER_SEC", "nvlink_rx_bytes_per_s", MIB),
)

# Cumulative nanoseconds the clocks were held down, per reason (nvmlDeviceGetFieldValues); the
# share of each interval they grew by is the throttle duration. Field ids are stable C values.
_FI_SW_POWER_CAP = 74  # NVML_FI_DEV_PERF_POLICY_POWER = NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP
_FI_SW_THERMAL = 269  # NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN
_FI_HW_THERMAL = 270  # NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN
_FI_HW_POWER_BRAKE = 271  # NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN
_THROTTLE_FIELDS = (_FI_SW_POWER_CAP, _FI_SW_THERMAL, _FI_HW_THERMAL, _FI_HW_POWER_BRAKE)
# Clocks-event bits used when the counters are not there (older drivers): the reason active at
# the snapshot counts as the whole second.
_BITS_THERMAL = 0x20 | 0x40  # SW and HW thermal slowdown
_BITS_POWER_BRAKE = 0x80  # HW power brake slowdown
_BITS_POWER_CAP = 0x04  # SW power cap


def psutil_pid_exists(pid: int) -> bool | None:
    """Whether ``pid`` is in this host's process table; None if psutil cannot tell.

    Meaningful only when the agent shares the host's pid namespace (a container needs
    ``--pid=host``), as NVML reports host pids."""
    import psutil

    try:
        return bool(psutil.pid_exists(pid))
    except (psutil.Error, OSError):
        return None


def psutil_pid_info(pid: int) -> tuple[str | None, str | None]:
    """(process name, user name) of a pid this agent can see; (None, None) when it cannot."""
    import psutil

    try:
        proc = psutil.Process(pid)
        name: str | None = proc.name()
    except (psutil.Error, OSError):
        return None, None
    try:
        user: str | None = proc.username()
    except (psutil.Error, OSError, KeyError):  # KeyError: a uid with no passwd entry
        user = None
    return name or None, user


def os_pgid(pid: int) -> int | None:
    """The process group of a pid on this host; None if it is gone or in another pid namespace.

    The dashboard's worker starts each job in a process group of its own, so the group ties a
    GPU process (a child of the job's command, say) back to the job that started it.
    """
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _load_pynvml() -> Any:
    """Import pynvml, or raise NotApplicable when there is no NVIDIA library to talk to."""
    if sys.platform.startswith("linux"):
        # Probing the shared library first keeps pynvml (several MiB) out of the agent's memory
        # on the many hosts that have no NVIDIA driver at all.
        import ctypes

        try:
            ctypes.CDLL("libnvidia-ml.so.1")
        except OSError as err:
            raise NotApplicable(f"no NVIDIA driver (libnvidia-ml.so.1: {err})") from None
    try:
        import pynvml
    except ImportError as err:
        raise NotApplicable(f"nvidia-ml-py is not installed ({err})") from None
    return pynvml


def mig_profile_from_name(name: str | None) -> str | None:
    """``3g.40gb`` from a MIG device name such as ``NVIDIA H100 80GB HBM3 MIG 3g.40gb``."""
    if not name:
        return None
    match = re.search(r"\b((?:\d+c\.)?\d+g\.\d+gb(?:\+\w+)?)\s*$", name)
    return match.group(1) if match else None


def mig_profile_from_attributes(attrs: Any) -> str | None:
    """A profile name rebuilt from nvmlDeviceGetAttributes (slice counts, memory in MiB)."""
    try:
        gi = int(attrs.gpuInstanceSliceCount)
        ci = int(attrs.computeInstanceSliceCount)
        gb = round(int(attrs.memorySizeMB) / 1024)
    except (AttributeError, TypeError, ValueError):
        return None
    if gi <= 0:
        return None
    prefix = f"{ci}c." if 0 < ci < gi else ""
    return f"{prefix}{gi}g.{gb}gb"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Device:
    """One device the collector reports: a physical GPU, or a MIG device after its parent."""

    def __init__(self, handle: Any, parent: _Device | None = None) -> None:
        self.handle = handle
        self.parent = parent
        self.uuid: str | None = None
        self.name: str | None = None
        self.mig_profile: str | None = None
        self.gpu_instance_id: int | None = None
        self.compute_instance_id: int | None = None
        self.xid_errors: int | None = None  # None: events not available for this device
        self.xid_last: int | None = None  # the latest XID code seen (0: none yet); None as above
        self.nvml_errors = 0  # NVML calls about this device that failed for a reason other than "not supported"
        self.nvml_last_error = 0  # the NVML return code of the latest such failure (0: NVML_SUCCESS, none yet)
        self.gpm_supported: bool | None = None  # None: this driver or nvidia-ml-py cannot say
        self.gpm_samples: list[Any] = []  # two allocated GPM samples, used in turn
        self.gpm_taken = 0  # samples taken so far
        self.throttle_counters: dict[int, tuple[int, int]] = {}  # field id -> (value ns, timestamp us)


class NvidiaCollector:
    """Per-GPU utilisation, memory, power, temperature, clocks, errors and processes."""

    name = "nvidia"

    def __init__(
        self,
        nvml: Any = None,
        pid_info: PidInfo = psutil_pid_info,
        pgid_of: Callable[[int], int | None] = os_pgid,
        pid_exists: Callable[[int], bool | None] = psutil_pid_exists,
    ) -> None:
        self._nvml = nvml if nvml is not None else _load_pynvml()
        self._pid_info = pid_info
        self._pgid_of = pgid_of
        self._pid_exists = pid_exists
        self._current: _Device | None = None  # the device being sampled, for its NVML error count
        self._logged: set[tuple[str, int | None]] = set()  # (function, NVML return code)
        self._names: dict[int, tuple[str | None, str | None]] = {}
        nv = self._nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as err:
            if getattr(err, "value", None) in _NO_DRIVER:
                raise NotApplicable(f"no NVIDIA driver ({err})") from None
            raise
        self._initialised = True
        count = self._query("nvmlDeviceGetCount")
        if not count:
            self.close()
            raise NotApplicable("NVML reports no GPUs")
        self.driver = _text(self._query("nvmlSystemGetDriverVersion"))
        self.devices: list[_Device] = []
        for index in range(count):
            handle = self._query("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue
            gpu = _Device(handle)
            gpu.uuid = _text(self._query("nvmlDeviceGetUUID", handle))
            gpu.name = _text(self._query("nvmlDeviceGetName", handle))
            self.devices.append(gpu)
            self.devices.extend(self._mig_devices(gpu))
        self._event_set = self._register_xid_events()
        self._setup_gpm()

    # -- NVML access -------------------------------------------------------------------------

    def _query(self, function: str, *args: Any, **kwargs: Any) -> Any:
        """Call one NVML function; an NVMLError becomes None (logged once unless benign)."""
        nv = self._nvml
        call = getattr(nv, function, None)
        if call is None:
            # An older nvidia-ml-py without this function: the field is simply unavailable.
            if (function, -1) not in self._logged:
                self._logged.add((function, -1))
                log.info("nvidia: %s is not in this nvidia-ml-py", function)
            return None
        try:
            return call(*args, **kwargs)
        except nv.NVMLError as err:
            self._query_error(function, err)
            return None

    def _mig_devices(self, gpu: _Device) -> list[_Device]:
        nv = self._nvml
        mode = self._query("nvmlDeviceGetMigMode", gpu.handle)
        if not mode or mode[0] != getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1):
            return []
        found: list[_Device] = []
        for slot in range(self._query("nvmlDeviceGetMaxMigDeviceCount", gpu.handle) or 0):
            handle = self._query("nvmlDeviceGetMigDeviceHandleByIndex", gpu.handle, slot)
            if handle is None:  # NOT_FOUND: the slot holds no MIG device
                continue
            mig = _Device(handle, parent=gpu)
            mig.uuid = _text(self._query("nvmlDeviceGetUUID", handle))
            mig.name = _text(self._query("nvmlDeviceGetName", handle))
            mig.gpu_instance_id = self._query("nvmlDeviceGetGpuInstanceId", handle)
            mig.compute_instance_id = self._query("nvmlDeviceGetComputeInstanceId", handle)
            mig.mig_profile = mig_profile_from_name(mig.name)
            if mig.mig_profile is None:
                attrs = self._query("nvmlDeviceGetAttributes", handle)
                mig.mig_profile = mig_profile_from_attributes(attrs) if attrs else None
            found.append(mig)
        return found

    def _register_xid_events(self) -> Any:
        """Listen for XID critical errors on each physical GPU; MIG devices share the parent's."""
        event_set = self._query("nvmlEventSetCreate")
        if event_set is None:
            return None
        for device in self.devices:
            if device.parent is None:
                registered = self._query_ok("nvmlDeviceRegisterEvents", device.handle, _XID_CRITICAL_ERROR, event_set)
                device.xid_errors = 0 if registered else None
        for device in self.devices:
            if device.parent is not None and device.parent.xid_errors is not None:
                device.xid_errors = 0 if device.gpu_instance_id is not None else None
        for device in self.devices:
            device.xid_last = 0 if device.xid_errors is not None else None
        return event_set

    def _setup_gpm(self) -> None:
        """Ask each physical GPU whether it has GPM; allocate two samples per device that does."""
        for device in self.devices:
            if device.parent is None:
                support = self._query("nvmlGpmQueryDeviceSupport", device.handle)
                if support is not None:
                    device.gpm_supported = bool(getattr(support, "isSupportedDevice", 0))
            else:
                # GPM is a property of the chip: a MIG device has it where its parent does.
                device.gpm_supported = device.parent.gpm_supported if device.gpu_instance_id is not None else None
            if device.gpm_supported:
                samples = [self._query("nvmlGpmSampleAlloc"), self._query("nvmlGpmSampleAlloc")]
                if None in samples:
                    device.gpm_supported = None
                    for sample in samples:
                        if sample is not None:
                            self._query_ok("nvmlGpmSampleFree", sample)
                else:
                    device.gpm_samples = samples

    def _query_ok(self, function: str, *args: Any) -> bool:
        """Like _query for calls that return nothing: True when NVML did not raise."""
        nv = self._nvml
        call = getattr(nv, function, None)
        if call is None:
            return False
        try:
            call(*args)
            return True
        except nv.NVMLError as err:
            self._query_error(function, err)
            return False

    def _query_error(self, function: str, err: Any) -> None:
        code = getattr(err, "value", None)
        if code not in _QUIET and self._current is not None:
            self._current.nvml_errors += 1
            self._current.nvml_last_error = int(code) if isinstance(code, int) else 999  # NVML_ERROR_UNKNOWN
        if code not in _QUIET and (function, code) not in self._logged:
            self._logged.add((function, code))
            log.warning("nvidia: %s failed: %s (reported once)", function, err)

    def _poll_xid(self) -> None:
        """Drain pending events without waiting (timeout 0) and count XIDs per device."""
        if self._event_set is None:
            return
        nv = self._nvml
        by_uuid = {d.uuid: d for d in self.devices if d.parent is None}
        for _ in range(_MAX_EVENTS_PER_POLL):
            try:
                event = nv.nvmlEventSetWait_v2(self._event_set, 0)
            except nv.NVMLError as err:
                if getattr(err, "value", None) != _TIMEOUT:
                    self._query_error("nvmlEventSetWait_v2", err)
                return
            if not int(getattr(event, "eventType", 0)) & _XID_CRITICAL_ERROR:
                continue
            gpu = by_uuid.get(_text(self._query("nvmlDeviceGetUUID", event.device)))
            if gpu is None or gpu.xid_errors is None:
                continue
            code = int(getattr(event, "eventData", 0) or 0)
            gpu.xid_errors += 1
            gpu.xid_last = code
            instance = getattr(event, "gpuInstanceId", _NO_INSTANCE)
            for mig in self.devices:
                if mig.parent is gpu and mig.xid_errors is not None and mig.gpu_instance_id == instance:
                    mig.xid_errors += 1
                    mig.xid_last = code

    # -- Collector protocol ------------------------------------------------------------------

    def inventory(self) -> dict[str, Any]:
        """``accelerators``: index, vendor, name, uuid, mem_total_bytes, power_limit_watts (W),
        parent_uuid, mig_profile, gpu_instance_id and compute_instance_id (MIG devices only, else
        None), gpm_supported (None: the driver cannot say), driver."""
        accelerators = []
        for index, device in enumerate(self.devices):
            memory = self._memory(device.handle)
            accelerators.append(
                {
                    "index": index,
                    "vendor": "nvidia",
                    "name": device.name,
                    "uuid": device.uuid,
                    "mem_total_bytes": memory[0],
                    "power_limit_watts": self._watts("nvmlDeviceGetEnforcedPowerLimit", device.handle),
                    "parent_uuid": device.parent.uuid if device.parent else None,
                    "mig_profile": device.mig_profile,
                    "gpu_instance_id": device.gpu_instance_id,
                    "compute_instance_id": device.compute_instance_id,
                    "gpm_supported": device.gpm_supported,
                    "driver": self.driver,
                }
            )
        return {"accelerators": accelerators}

    def collect(self) -> dict[str, Any]:
        """One snapshot per device; a field NVML cannot read is None."""
        self._poll_xid()
        gpus = []
        live_pids: set[int] = set()
        for index, device in enumerate(self.devices):
            sample = self._sample(device)
            sample["index"] = index
            for proc in sample["processes"] or ():
                live_pids.add(proc["pid"])
            gpus.append(sample)
        # NVML lists a MIG instance's processes on the parent GPU too: keep them on the instance
        # only, so memory per process (and per user or job) is not counted twice.
        by_device = dict(zip(self.devices, gpus, strict=True))
        self._attribute_to_compute_instances(by_device)
        for device, sample in by_device.items():
            parent = by_device.get(device.parent) if device.parent is not None else None
            if parent and parent["processes"] and sample["processes"]:
                taken = {p["pid"] for p in sample["processes"]}
                parent["processes"] = [p for p in parent["processes"] if p["pid"] not in taken]
        # Forget names of processes that ended, so a reused pid gets looked up again.
        for pid in set(self._names) - live_pids:
            del self._names[pid]
        return {"gpus": gpus}

    def _attribute_to_compute_instances(self, by_device: dict[_Device, dict[str, Any]]) -> None:
        """Keep each MIG process on the compute instance that runs it.

        The compute instances of one GPU instance share its memory, and NVML may list the GPU
        instance's processes on each of their MIG devices; the process's own computeInstanceId
        says which one runs it. Without that id the process stays on the first of them, so its
        memory is never counted twice."""
        claimed: set[tuple[int, int | None, int]] = set()  # (id of parent, GPU instance, pid)
        for device, sample in by_device.items():
            if device.parent is None or not sample["processes"]:
                continue
            kept = []
            for proc in sample["processes"]:
                ci = proc.pop("_compute_instance", None)
                key = (id(device.parent), device.gpu_instance_id, proc["pid"])
                if ci is not None and device.compute_instance_id is not None:
                    if ci == device.compute_instance_id:
                        kept.append(proc)
                elif key not in claimed:
                    kept.append(proc)
                claimed.add(key)
            sample["processes"] = kept
        for sample in by_device.values():
            for proc in sample["processes"] or ():
                proc.pop("_compute_instance", None)

    def close(self) -> None:
        """Free the GPM samples and the event set; shut NVML down (nvmlInit is reference-counted)."""
        for device in getattr(self, "devices", ()):
            for sample in device.gpm_samples:
                self._query_ok("nvmlGpmSampleFree", sample)
            device.gpm_samples = []
        if getattr(self, "_event_set", None) is not None:
            self._query_ok("nvmlEventSetFree", self._event_set)
            self._event_set = None
        if getattr(self, "_initialised", False):
            self._initialised = False
            self._query_ok("nvmlShutdown")

    # -- fields ------------------------------------------------------------------------------

    def _watts(self, function: str, handle: Any) -> float | None:
        milliwatts = self._query(function, handle)
        return milliwatts / 1000 if milliwatts is not None else None

    def _memory(self, handle: Any) -> tuple[int | None, int | None]:
        """(total, used) in bytes. The v2 call leaves driver-reserved memory out of "used",
        which is what nvidia-smi shows; older drivers and MIG devices fall back to v1."""
        nv = self._nvml
        info = None
        version = getattr(nv, "nvmlMemory_v2", None)
        if version is not None:
            info = self._query("nvmlDeviceGetMemoryInfo", handle, version=version)
        if info is None:
            info = self._query("nvmlDeviceGetMemoryInfo", handle)
        if info is None:
            return None, None
        return int(info.total), int(info.used)

    def _throttle_reasons(self, handle: Any) -> int | None:
        nv = self._nvml
        # The clocks-event name replaced the throttle name in NVML 12.2; older bindings have
        # only the old one and older drivers lack the new symbol.
        for function in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            if hasattr(nv, function):
                value = self._query(function, handle)
                if value is not None:
                    return int(value)
        return None

    def _ecc_counts(self, handle: Any) -> tuple[int, int] | None:
        """Volatile (corrected, uncorrected) ECC errors of one handle; None when ECC is off or unsupported."""
        nv = self._nvml
        mode = self._query("nvmlDeviceGetEccMode", handle)
        if not mode or mode[0] != getattr(nv, "NVML_FEATURE_ENABLED", 1):
            return None
        counts = []
        for error_type in (nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED):
            count = self._query("nvmlDeviceGetTotalEccErrors", handle, error_type, nv.NVML_VOLATILE_ECC)
            if count is None:
                return None
            counts.append(int(count))
        return counts[0], counts[1]

    def _ecc(self, device: _Device) -> tuple[int, int] | None:
        """(corrected, uncorrected) for a device; a MIG device without its own counts shows its parent's,
        since its memory is the parent's memory."""
        counts = self._ecc_counts(device.handle)
        if counts is None and device.parent is not None:
            counts = self._ecc_counts(device.parent.handle)
        return counts

    def _memory_health(self, device: _Device) -> dict[str, int | None]:
        """Retired pages (pre-Ampere) and row remapping (Ampere and later) of a physical GPU; None
        where the GPU has neither, and on MIG devices (their parent reports them)."""
        nv = self._nvml
        out: dict[str, int | None] = dict.fromkeys(
            (
                "retired_pages",
                "retired_pages_pending",
                "remapped_rows_correctable",
                "remapped_rows_uncorrectable",
                "row_remap_pending",
                "row_remap_failed",
            ),
        )
        if device.parent is not None:
            return out
        handle = device.handle
        pending = self._query("nvmlDeviceGetRetiredPagesPendingStatus", handle)
        if pending is not None:
            total = 0
            for cause in (
                getattr(nv, "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS", 0),
                getattr(nv, "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR", 1),
            ):
                pages = self._query("nvmlDeviceGetRetiredPages", handle, cause)
                if pages is None:
                    total = -1
                    break
                total += len(pages)
            out["retired_pages"] = total if total >= 0 else None
            out["retired_pages_pending"] = int(bool(pending))
        rows = self._query("nvmlDeviceGetRemappedRows", handle)
        if rows is not None:
            corrected, uncorrected, is_pending, failed = (int(v) for v in rows)
            out["remapped_rows_correctable"] = corrected
            out["remapped_rows_uncorrectable"] = uncorrected
            out["row_remap_pending"] = int(bool(is_pending))
            out["row_remap_failed"] = int(bool(failed))
        return out

    def _throttle_durations(self, device: _Device, reasons: int | None) -> dict[str, float | None]:
        """% of the time since the previous snapshot that clocks were held down by thermal slowdown,
        the power brake and the software power cap; from NVML's nanosecond counters, else from the
        reason bits active now (a 1 s snapshot then counts whole)."""
        out: dict[str, float | None] = {
            "thermal_slowdown_percent": None,
            "power_brake_percent": None,
            "power_cap_percent": None,
        }
        if device.parent is not None:
            return out  # clocks belong to the parent GPU
        values = self._query("nvmlDeviceGetFieldValues", device.handle, list(_THROTTLE_FIELDS))
        shares: dict[int, float] = {}
        if values is not None:
            for value in values:
                if int(getattr(value, "nvmlReturn", 1)) != 0:
                    continue
                field_id, ts_us = int(value.fieldId), int(value.timestamp)
                counter = int(value.value.ullVal)
                before = device.throttle_counters.get(field_id)
                device.throttle_counters[field_id] = (counter, ts_us)
                if before is not None and ts_us > before[1] and counter >= before[0]:
                    shares[field_id] = min(100.0, (counter - before[0]) / ((ts_us - before[1]) * 1000.0) * 100.0)
        if shares:
            if _FI_SW_THERMAL in shares or _FI_HW_THERMAL in shares:
                out["thermal_slowdown_percent"] = round(
                    min(100.0, shares.get(_FI_SW_THERMAL, 0.0) + shares.get(_FI_HW_THERMAL, 0.0)), 3
                )
            if _FI_HW_POWER_BRAKE in shares:
                out["power_brake_percent"] = round(shares[_FI_HW_POWER_BRAKE], 3)
            if _FI_SW_POWER_CAP in shares:
                out["power_cap_percent"] = round(shares[_FI_SW_POWER_CAP], 3)
        elif values is None and reasons is not None:
            out["thermal_slowdown_percent"] = 100.0 if reasons & _BITS_THERMAL else 0.0
            out["power_brake_percent"] = 100.0 if reasons & _BITS_POWER_BRAKE else 0.0
            out["power_cap_percent"] = 100.0 if reasons & _BITS_POWER_CAP else 0.0
        return out

    def _gpm(self, device: _Device) -> dict[str, float | None]:
        """GPM metrics between the previous ``collect()`` and now (%, bytes/s); all None where the
        device has no GPM, and on the first snapshot (there is no earlier sample yet)."""
        out: dict[str, float | None] = {name: None for _, name, _ in GPM_METRICS}
        if not device.gpm_samples:
            return out
        nv = self._nvml
        current = device.gpm_samples[device.gpm_taken % 2]
        if device.parent is None:
            taken = self._query("nvmlGpmSampleGet", device.handle, current)
        else:
            taken = self._query("nvmlGpmMigSampleGet", device.parent.handle, device.gpu_instance_id, current)
        if taken is None:
            device.gpm_taken = 0  # start the pair again: the previous sample is no longer adjacent
            return out
        device.gpm_taken += 1
        if device.gpm_taken < 2:
            return out
        previous = device.gpm_samples[device.gpm_taken % 2]
        struct = getattr(nv, "c_nvmlGpmMetricsGet_t", None)
        ids = [(getattr(nv, f"NVML_GPM_METRIC_{gpm}", None), name, scale) for gpm, name, scale in GPM_METRICS]
        ids = [entry for entry in ids if entry[0] is not None]
        if struct is None or not ids:
            return out
        request = struct()
        request.version = nv.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(ids)
        request.sample1 = previous
        request.sample2 = current
        for i, (metric_id, _, _) in enumerate(ids):
            request.metrics[i].metricId = metric_id
        if self._query("nvmlGpmMetricsGet", request) is None:
            return out
        for i, (_, name, scale) in enumerate(ids):
            metric = request.metrics[i]
            if int(metric.nvmlReturn) != 0:
                continue
            value = float(metric.value)
            if value != value or value < 0:  # NaN or negative: a reading NVML could not make
                continue
            out[name] = round(min(value, 100.0) if scale == 1.0 else value * scale, 3)
        return out

    def _processes(self, handle: Any) -> list[dict[str, Any]] | None:
        """Compute and graphics processes: pid, name, user, pgid, exists (in the host's process
        table; None if unknown), mem_used_bytes (None if hidden)."""
        compute = self._query("nvmlDeviceGetComputeRunningProcesses", handle)
        graphics = self._query("nvmlDeviceGetGraphicsRunningProcesses", handle)
        if compute is None and graphics is None:
            return None
        merged: dict[int, dict[str, Any]] = {}
        for proc in list(compute or ()) + list(graphics or ()):
            pid = int(proc.pid)
            used = getattr(proc, "usedGpuMemory", None)
            entry = merged.get(pid)
            if entry is None:
                name, user = self._describe(pid)
                ci = getattr(proc, "computeInstanceId", None)
                merged[pid] = {
                    "pid": pid,
                    "name": name,
                    "user": user,
                    "pgid": self._pgid_of(pid),
                    "exists": self._pid_exists(pid),
                    "mem_used_bytes": int(used) if used is not None else None,
                    # Read by collect() to place the process on its compute instance, then dropped.
                    "_compute_instance": int(ci) if ci is not None and int(ci) != _NO_INSTANCE else None,
                }
            elif used is not None and entry["mem_used_bytes"] is None:
                # A C+G process is listed twice with the same memory: count it once.
                entry["mem_used_bytes"] = int(used)
        return sorted(merged.values(), key=lambda p: p["pid"])

    def _describe(self, pid: int) -> tuple[str | None, str | None]:
        cached = self._names.get(pid)
        if cached is None:
            name, user = self._pid_info(pid)
            if name is None:
                # The pid may live in another container: NVML still knows its name.
                name = _text(self._query("nvmlSystemGetProcessName", pid))
                if name:
                    name = name.rsplit("/", 1)[-1]
            cached = self._names[pid] = (name, user)
        return cached

    def _sample(self, device: _Device) -> dict[str, Any]:
        self._current = device
        try:
            return self._read(device)
        finally:
            self._current = None

    def _read(self, device: _Device) -> dict[str, Any]:
        nv = self._nvml
        handle = device.handle
        util = self._query("nvmlDeviceGetUtilizationRates", handle)
        total, used = self._memory(handle)
        reasons = self._throttle_reasons(handle)
        ecc = self._ecc(device)
        sample = {
            "uuid": device.uuid,
            "util_percent": float(util.gpu) if util is not None else None,
            "mem_util_percent": float(util.memory) if util is not None else None,
            "mem_used_bytes": used,
            "mem_total_bytes": total,
            "power_watts": self._watts("nvmlDeviceGetPowerUsage", handle),
            "power_limit_watts": self._watts("nvmlDeviceGetEnforcedPowerLimit", handle),
            "temp_c": self._query("nvmlDeviceGetTemperature", handle, nv.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": self._query("nvmlDeviceGetClockInfo", handle, nv.NVML_CLOCK_SM),
            "mem_clock_mhz": self._query("nvmlDeviceGetClockInfo", handle, nv.NVML_CLOCK_MEM),
            "throttle_reasons": reasons,
            "ecc_errors": sum(ecc) if ecc is not None else None,
            "ecc_uncorrected_errors": ecc[1] if ecc is not None else None,
            "xid_errors": device.xid_errors,
            "xid_last": device.xid_last,
            "processes": self._processes(handle),
        }
        sample.update(self._throttle_durations(device, reasons))
        sample.update(self._memory_health(device))
        sample.update(self._gpm(device))
        # Last, so that every failure of this snapshot is counted.
        sample["nvml_errors"] = device.nvml_errors
        sample["nvml_last_error"] = device.nvml_last_error
        return sample
