"""NVIDIA GPUs (and their MIG devices) through NVML.

The NVML source is a parameter: the real ``pynvml`` module (nvidia-ml-py) by default, or a
replay of captured output (:mod:`hwprobe.testing.nvml_replay`) in tests. Every per-field
query goes through :meth:`NvidiaCollector._query`, which turns an NVML error into ``None``.
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
        self.xid_errors: int | None = None  # None: events not available for this device


class NvidiaCollector:
    """Per-GPU utilisation, memory, power, temperature, clocks, errors and processes."""

    name = "nvidia"

    def __init__(
        self, nvml: Any = None, pid_info: PidInfo = psutil_pid_info, pgid_of: Callable[[int], int | None] = os_pgid
    ) -> None:
        self._nvml = nvml if nvml is not None else _load_pynvml()
        self._pid_info = pid_info
        self._pgid_of = pgid_of
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
        return event_set

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
            gpu.xid_errors += 1
            instance = getattr(event, "gpuInstanceId", _NO_INSTANCE)
            for mig in self.devices:
                if mig.parent is gpu and mig.xid_errors is not None and mig.gpu_instance_id == instance:
                    mig.xid_errors += 1

    # -- Collector protocol ------------------------------------------------------------------

    def inventory(self) -> dict[str, Any]:
        """``accelerators``: index, vendor, name, uuid, mem_total_bytes, power_limit_watts (W),
        parent_uuid and mig_profile (MIG devices only, else None), driver."""
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
        for device, sample in by_device.items():
            parent = by_device.get(device.parent) if device.parent is not None else None
            if parent and parent["processes"] and sample["processes"]:
                taken = {p["pid"] for p in sample["processes"]}
                parent["processes"] = [p for p in parent["processes"] if p["pid"] not in taken]
        # Forget names of processes that ended, so a reused pid gets looked up again.
        for pid in set(self._names) - live_pids:
            del self._names[pid]
        return {"gpus": gpus}

    def close(self) -> None:
        """Free the event set and shut NVML down (nvmlInit is reference-counted)."""
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

    def _ecc_errors(self, handle: Any) -> int | None:
        """Volatile corrected + uncorrected ECC errors; None when ECC is off or unsupported."""
        nv = self._nvml
        mode = self._query("nvmlDeviceGetEccMode", handle)
        if not mode or mode[0] != getattr(nv, "NVML_FEATURE_ENABLED", 1):
            return None
        total = 0
        for error_type in (nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED):
            count = self._query("nvmlDeviceGetTotalEccErrors", handle, error_type, nv.NVML_VOLATILE_ECC)
            if count is None:
                return None
            total += int(count)
        return total

    def _processes(self, handle: Any) -> list[dict[str, Any]] | None:
        """Compute and graphics processes: pid, name, user, mem_used_bytes (None if hidden)."""
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
                merged[pid] = {
                    "pid": pid,
                    "name": name,
                    "user": user,
                    "pgid": self._pgid_of(pid),
                    "mem_used_bytes": int(used) if used is not None else None,
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
        nv = self._nvml
        handle = device.handle
        util = self._query("nvmlDeviceGetUtilizationRates", handle)
        total, used = self._memory(handle)
        return {
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
            "throttle_reasons": self._throttle_reasons(handle),
            "ecc_errors": self._ecc_errors(handle),
            "xid_errors": device.xid_errors,
            "processes": self._processes(handle),
        }
