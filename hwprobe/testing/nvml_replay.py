"""A stand-in NVML *source*: the functions NvidiaCollector calls, answered from a recording.

Two ways to build one:

* :func:`from_recording` takes the JSON document that :func:`record` writes while querying a
  real NVML (``bench/gpu_check.py`` does this on a real GPU);
* :func:`from_nvidia_smi_q` parses real ``nvidia-smi -q`` text (optionally with ``nvidia-smi
  -L`` text for MIG UUIDs and profiles) or ``nvidia-smi -q -x`` XML (what users on any OS can
  attach to a bug report). A field shown ``N/A`` raises NOT_SUPPORTED, as NVML itself would.
  Anything else (a ``--query-gpu`` CSV, the default table) raises :class:`CaptureFormatError`
  rather than passing for a host without GPUs.

Recording format (``"format": "hwprobe.nvml_recording", "version": 1``): the top level and each
device map an NVML function name to what it returned; a failed call is stored as
``{"nvml_error": <NVML return code>, "message": "..."}`` and an absent key reads as
NOT_SUPPORTED. Calls with an enum argument store a small dict keyed by that argument's name
(``nvmlDeviceGetClockInfo: {"graphics", "sm", "mem"}`` in MHz, ``nvmlDeviceGetTemperature:
{"gpu"}`` in C, ``nvmlDeviceGetTotalEccErrors: {"corrected_volatile", "uncorrected_volatile"}``).
Memory is in bytes, power in mW, as NVML returns them. MIG devices sit in their parent's
``mig_devices`` list with their ``slot``.

Readings that change from call to call are lists served in turn (the last one repeats):
``gpm_readings`` (what ``nvmlGpmMetricsGet`` returned between consecutive samples, keyed by the
``NVML_GPM_METRIC_<name>`` suffix, e.g. ``{"SM_UTIL": 95.957}``; a MIG device's own list is what
``nvmlGpmMigSampleGet`` of its GPU instance reads) and ``nvmlDeviceGetFieldValues``
(``[{"timestamp_us": t, "values": {"<field id>": value}}]``). ``nvmlDeviceGetRetiredPages`` is
``{"single_bit": [addresses], "double_bit": [addresses]}`` and ``nvmlDeviceGetRemappedRows`` the
4-tuple ``[correctable, uncorrectable, pending, failed]``.

Exceptions and constants are the real ``pynvml`` ones (nvidia-ml-py imports without a driver).
"""

from __future__ import annotations

import ctypes
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from functools import partial
from types import SimpleNamespace
from typing import Any

import pynvml

FORMAT = "hwprobe.nvml_recording"
VERSION = 1

_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
_CLOCKS = {"graphics": pynvml.NVML_CLOCK_GRAPHICS, "sm": pynvml.NVML_CLOCK_SM, "mem": pynvml.NVML_CLOCK_MEM}
_MIB = 1024 * 1024
# nvidia-smi -q "Clocks Event Reasons" lines -> NVML clocks-event bits
_REASON_BITS = {
    "Idle": pynvml.nvmlClocksEventReasonGpuIdle,
    "Applications Clocks Setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "SW Power Cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "HW Slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "Sync Boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "SW Thermal Slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "HW Thermal Slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "HW Power Brake Slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    "Display Clock Setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
}


class CaptureFormatError(ValueError):
    """A capture the replay cannot read; ``str()`` says what it looks like and what to send instead."""


# NVML_GPM_METRIC_<name> value -> name, as recordings key their GPM readings.
GPM_NAMES = {
    value: name.removeprefix("NVML_GPM_METRIC_")
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_GPM_METRIC_") and name != "NVML_GPM_METRIC_MAX"
}
# What record() asks GPM for: the metrics the collector reports.
RECORDED_GPM = (
    "SM_UTIL",
    "SM_OCCUPANCY",
    "ANY_TENSOR_UTIL",
    "HMMA_TENSOR_UTIL",
    "DRAM_BW_UTIL",
    "FP16_UTIL",
    "FP32_UTIL",
    "FP64_UTIL",
    "PCIE_TX_PER_SEC",
    "PCIE_RX_PER_SEC",
    "NVLINK_TOTAL_TX_PER_SEC",
    "NVLINK_TOTAL_RX_PER_SEC",
)
# Clocks-event counters (ns) the collector reads through nvmlDeviceGetFieldValues.
THROTTLE_FIELDS = {
    "SW Power Capping": 74,
    "SW Thermal Slowdown": 269,
    "HW Thermal Slowdown": 270,
    "HW Power Braking": 271,
}


def _error(code: int) -> dict[str, Any]:
    return {"nvml_error": code, "message": str(pynvml.NVMLError(code))}


class _Handle:
    """An opaque device handle, as NVML's are."""

    def __init__(self, data: dict[str, Any], parent: _Handle | None = None) -> None:
        self.data = data
        self.parent = parent


class NvmlReplay:
    """Serves NVML calls from a recording dict. Unknown constants come from pynvml."""

    NVMLError = pynvml.NVMLError
    # The GPM request is a ctypes structure the caller fills in; it is the real one.
    c_nvmlGpmMetricsGet_t = pynvml.c_nvmlGpmMetricsGet_t

    def __init__(self, recording: dict[str, Any]) -> None:
        if recording.get("format") != FORMAT:
            raise ValueError(f"not an NVML recording (format {recording.get('format')!r})")
        self.recording = recording
        self._handles = [_Handle(dev) for dev in recording.get("devices", [])]
        self._children: dict[int, dict[int, _Handle]] = {}
        for handle in self._handles:
            self._children[id(handle)] = {
                int(mig["slot"]): _Handle(mig, parent=handle) for mig in handle.data.get("mig_devices", [])
            }
        self._events: list[SimpleNamespace] = []
        self.initialised = 0
        # GPM samples handed out: token -> [device data, ordinal of the sample on that device]
        self._gpm_samples: dict[int, list[Any]] = {}
        self._gpm_taken: dict[int, int] = {}  # id(device data) -> samples taken
        self._field_calls: dict[int, int] = {}  # id(device data) -> nvmlDeviceGetFieldValues calls

    def __getattr__(self, name: str) -> Any:
        # Constants and exception classes are the real ones; functions must be ours, so that a
        # call the replay does not serve fails here instead of reaching a real driver.
        value = getattr(pynvml, name)
        if callable(value) and not (isinstance(value, type) and issubclass(value, Exception)):
            raise AttributeError(f"the NVML replay does not serve {name}")
        return value

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _get(data: dict[str, Any], key: str, sub: str | None = None) -> Any:
        value = data.get(key, _error(_NOT_SUPPORTED))
        if isinstance(value, dict) and "nvml_error" in value:
            raise pynvml.NVMLError(int(value["nvml_error"]))
        if sub is not None:
            if not isinstance(value, dict) or sub not in value:
                raise pynvml.NVMLError(_NOT_SUPPORTED)
            return NvmlReplay._get(value, sub)
        return value

    def _dev(self, handle: _Handle, key: str, sub: str | None = None) -> Any:
        if not isinstance(handle, _Handle):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._get(handle.data, key, sub)

    # -- library -------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        if "nvmlInit" in self.recording:
            self._get(self.recording, "nvmlInit")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised = max(0, self.initialised - 1)

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._get(self.recording, "nvmlSystemGetDriverVersion")

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        return self._get(self.recording, "nvmlSystemGetProcessName", str(pid))

    def nvmlDeviceGetCount(self) -> int:
        return len(self._handles)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not 0 <= index < len(self._handles):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._handles[index]

    # -- device --------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._dev(handle, "nvmlDeviceGetName")

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._dev(handle, "nvmlDeviceGetUUID")

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> SimpleNamespace:
        key = "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo"
        return SimpleNamespace(**self._dev(handle, key))

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> SimpleNamespace:
        return SimpleNamespace(**self._dev(handle, "nvmlDeviceGetUtilizationRates"))

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._dev(handle, "nvmlDeviceGetPowerUsage")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return self._dev(handle, "nvmlDeviceGetEnforcedPowerLimit")

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._dev(handle, "nvmlDeviceGetTemperature", "gpu")

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock: int) -> int:
        names = {v: k for k, v in _CLOCKS.items()}
        if clock not in names:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._dev(handle, "nvmlDeviceGetClockInfo", names[clock])

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrentClocksEventReasons")

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons

    def nvmlDeviceGetEccMode(self, handle: _Handle) -> list[int]:
        return list(self._dev(handle, "nvmlDeviceGetEccMode"))

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, error_type: int, counter_type: int) -> int:
        if counter_type != pynvml.NVML_VOLATILE_ECC:
            raise pynvml.NVMLError(_NOT_SUPPORTED)
        kind = "corrected" if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED else "uncorrected"
        return self._dev(handle, "nvmlDeviceGetTotalEccErrors", f"{kind}_volatile")

    def _procs(self, handle: _Handle, key: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(**p) for p in self._dev(handle, key)]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[SimpleNamespace]:
        return self._procs(handle, "nvmlDeviceGetComputeRunningProcesses")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: _Handle) -> list[SimpleNamespace]:
        return self._procs(handle, "nvmlDeviceGetGraphicsRunningProcesses")

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        return list(self._dev(handle, "nvmlDeviceGetMigMode"))

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        return self._dev(handle, "nvmlDeviceGetMaxMigDeviceCount")

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, slot: int) -> _Handle:
        self._dev(handle, "nvmlDeviceGetMaxMigDeviceCount")
        child = self._children.get(id(handle), {}).get(slot)
        if child is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return child

    def nvmlDeviceIsMigDeviceHandle(self, handle: _Handle) -> int:
        return int(handle.parent is not None)

    def nvmlDeviceGetGpuInstanceId(self, handle: _Handle) -> int:
        return self._dev(handle, "nvmlDeviceGetGpuInstanceId")

    def nvmlDeviceGetComputeInstanceId(self, handle: _Handle) -> int:
        return self._dev(handle, "nvmlDeviceGetComputeInstanceId")

    def nvmlDeviceGetAttributes(self, handle: _Handle) -> SimpleNamespace:
        return SimpleNamespace(**self._dev(handle, "nvmlDeviceGetAttributes"))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: _Handle) -> int:
        return int(self._dev(handle, "nvmlDeviceGetRetiredPagesPendingStatus"))

    def nvmlDeviceGetRetiredPages(self, handle: _Handle, cause: int) -> list[int]:
        kind = "double_bit" if cause == pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR else "single_bit"
        return list(self._dev(handle, "nvmlDeviceGetRetiredPages", kind))

    def nvmlDeviceGetRemappedRows(self, handle: _Handle) -> tuple[int, int, int, int]:
        corrected, uncorrected, pending, failed = self._dev(handle, "nvmlDeviceGetRemappedRows")
        return int(corrected), int(uncorrected), int(pending), int(failed)

    def nvmlDeviceGetFieldValues(self, handle: _Handle, field_ids: list[int]) -> list[SimpleNamespace]:
        readings = self._dev(handle, "nvmlDeviceGetFieldValues")
        calls = self._field_calls.get(id(handle.data), 0)
        self._field_calls[id(handle.data)] = calls + 1
        reading = readings[min(calls, len(readings) - 1)]
        # A static reading still moves its clock on by a second per call, as a 1 s agent loop does.
        ts = int(reading["timestamp_us"]) + (max(0, calls - len(readings) + 1) * 1_000_000)
        out = []
        for field_id in field_ids:
            value = reading["values"].get(str(field_id))
            out.append(
                SimpleNamespace(
                    fieldId=field_id,
                    timestamp=ts,
                    nvmlReturn=pynvml.NVML_SUCCESS if value is not None else _NOT_SUPPORTED,
                    value=SimpleNamespace(ullVal=int(value or 0)),
                )
            )
        return out

    # -- GPM -----------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle: _Handle) -> SimpleNamespace:
        return SimpleNamespace(**self._dev(handle, "nvmlGpmQueryDeviceSupport"))

    def nvmlGpmSampleAlloc(self) -> Any:
        token = len(self._gpm_samples) + 1
        self._gpm_samples[token] = [None, 0]
        # An opaque pointer as NVML's is; its address is our token, never dereferenced.
        return ctypes.cast(ctypes.c_void_p(token * 16), pynvml.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self._gpm_samples.pop(self._token(sample), None)

    @staticmethod
    def _token(sample: Any) -> int:
        return int(ctypes.cast(sample, ctypes.c_void_p).value or 0) // 16

    def _take(self, data: dict[str, Any], sample: Any) -> Any:
        self._get(data, "gpm_readings")  # NOT_SUPPORTED where the recording has none
        entry = self._gpm_samples.get(self._token(sample))
        if entry is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        taken = self._gpm_taken.get(id(data), 0) + 1
        self._gpm_taken[id(data)] = taken
        entry[0], entry[1] = data, taken
        return sample

    def nvmlGpmSampleGet(self, handle: _Handle, sample: Any) -> Any:
        if not isinstance(handle, _Handle):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._take(handle.data, sample)

    def nvmlGpmMigSampleGet(self, handle: _Handle, gpu_instance_id: int, sample: Any) -> Any:
        for child in self._children.get(id(handle), {}).values():
            if child.data.get("nvmlDeviceGetGpuInstanceId") == gpu_instance_id:
                return self._take(child.data, sample)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        first = self._gpm_samples.get(self._token(request.sample1))
        second = self._gpm_samples.get(self._token(request.sample2))
        if not first or not second or first[0] is None or first[0] is not second[0] or first[1] >= second[1]:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        readings = second[0]["gpm_readings"]
        reading = readings[min(second[1] - 2, len(readings) - 1)]
        for i in range(request.numMetrics):
            metric = request.metrics[i]
            value = reading.get(GPM_NAMES.get(metric.metricId, ""))
            metric.nvmlReturn = pynvml.NVML_SUCCESS if value is not None else _NOT_SUPPORTED
            metric.value = float(value) if value is not None else 0.0
        return request

    # -- events --------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlEventSetFree(self, event_set: object) -> None:
        return None

    def nvmlDeviceRegisterEvents(self, handle: _Handle, event_types: int, event_set: object) -> None:
        self._dev(handle, "nvmlDeviceRegisterEvents")

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> SimpleNamespace:
        if not self._events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        return self._events.pop(0)

    nvmlEventSetWait = nvmlEventSetWait_v2

    def push_xid(self, gpu_index: int, xid: int = 79, gpu_instance_id: int = 0xFFFFFFFF) -> None:
        """Queue one XID critical-error event on a physical GPU (for tests)."""
        self._events.append(
            SimpleNamespace(
                device=self._handles[gpu_index],
                eventType=pynvml.nvmlEventTypeXidCriticalError,
                eventData=xid,
                gpuInstanceId=gpu_instance_id,
                computeInstanceId=0xFFFFFFFF,
            )
        )


def from_recording(recording: dict[str, Any]) -> NvmlReplay:
    """A replay serving what :func:`record` recorded (the dict, as loaded from JSON)."""
    return NvmlReplay(recording)


# -- recording a real NVML -------------------------------------------------------------------


def _call(nv: Any, function: str, *args: Any, convert: Any = None, **kwargs: Any) -> Any:
    call = getattr(nv, function, None)
    if call is None:
        return _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    try:
        value = call(*args, **kwargs)
    except nv.NVMLError as err:
        return {"nvml_error": getattr(err, "value", -1), "message": str(err)}
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return convert(value) if convert else value


def _fields(*names: str) -> Any:
    return lambda obj: {n: getattr(obj, n, None) for n in names}


def _procs(value: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {
            "pid": int(p.pid),
            "usedGpuMemory": getattr(p, "usedGpuMemory", None),
            "gpuInstanceId": getattr(p, "gpuInstanceId", None),
            "computeInstanceId": getattr(p, "computeInstanceId", None),
        }
        for p in value
    ]


def _record_device(nv: Any, handle: Any, pids: set[int]) -> dict[str, Any]:
    dev: dict[str, Any] = {}
    for fn in (
        "nvmlDeviceGetName",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetComputeInstanceId",
    ):
        dev[fn] = _call(nv, fn, handle)
    for fn in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        if hasattr(nv, fn):
            dev["nvmlDeviceGetCurrentClocksEventReasons"] = _call(nv, fn, handle)
            break
    dev["nvmlDeviceGetMemoryInfo"] = _call(
        nv, "nvmlDeviceGetMemoryInfo", handle, convert=_fields("total", "free", "used")
    )
    if hasattr(nv, "nvmlMemory_v2"):
        dev["nvmlDeviceGetMemoryInfo_v2"] = _call(
            nv,
            "nvmlDeviceGetMemoryInfo",
            handle,
            version=nv.nvmlMemory_v2,
            convert=_fields("total", "reserved", "free", "used"),
        )
    dev["nvmlDeviceGetUtilizationRates"] = _call(
        nv, "nvmlDeviceGetUtilizationRates", handle, convert=_fields("gpu", "memory")
    )
    dev["nvmlDeviceGetTemperature"] = {"gpu": _call(nv, "nvmlDeviceGetTemperature", handle, nv.NVML_TEMPERATURE_GPU)}
    dev["nvmlDeviceGetClockInfo"] = {
        name: _call(nv, "nvmlDeviceGetClockInfo", handle, getattr(nv, const))
        for name, const in (("graphics", "NVML_CLOCK_GRAPHICS"), ("sm", "NVML_CLOCK_SM"), ("mem", "NVML_CLOCK_MEM"))
    }
    dev["nvmlDeviceGetEccMode"] = _call(nv, "nvmlDeviceGetEccMode", handle, convert=list)
    dev["nvmlDeviceGetTotalEccErrors"] = {
        f"{kind}_volatile": _call(nv, "nvmlDeviceGetTotalEccErrors", handle, error_type, nv.NVML_VOLATILE_ECC)
        for kind, error_type in (
            ("corrected", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        )
    }
    for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        dev[fn] = _call(nv, fn, handle, convert=_procs)
        if isinstance(dev[fn], list):
            pids.update(p["pid"] for p in dev[fn])
    dev["nvmlDeviceGetMigMode"] = _call(nv, "nvmlDeviceGetMigMode", handle, convert=list)
    dev["nvmlDeviceGetRetiredPagesPendingStatus"] = _call(nv, "nvmlDeviceGetRetiredPagesPendingStatus", handle)
    dev["nvmlDeviceGetRetiredPages"] = {
        kind: _call(nv, "nvmlDeviceGetRetiredPages", handle, cause, convert=list)
        for kind, cause in (
            ("single_bit", nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
            ("double_bit", nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
        )
    }
    dev["nvmlDeviceGetRemappedRows"] = _call(nv, "nvmlDeviceGetRemappedRows", handle, convert=list)
    fields = _call(nv, "nvmlDeviceGetFieldValues", handle, list(THROTTLE_FIELDS.values()))
    if isinstance(fields, dict):
        dev["nvmlDeviceGetFieldValues"] = fields
    else:
        dev["nvmlDeviceGetFieldValues"] = [
            {
                "timestamp_us": max((int(f.timestamp) for f in fields), default=0),
                "values": {str(int(f.fieldId)): int(f.value.ullVal) for f in fields if int(f.nvmlReturn) == 0},
            }
        ]
    dev["nvmlGpmQueryDeviceSupport"] = _call(
        nv, "nvmlGpmQueryDeviceSupport", handle, convert=_fields("isSupportedDevice")
    )
    dev["nvmlDeviceGetAttributes"] = _call(
        nv,
        "nvmlDeviceGetAttributes",
        handle,
        convert=_fields(
            "multiprocessorCount",
            "sharedCopyEngineCount",
            "sharedDecoderCount",
            "sharedEncoderCount",
            "sharedJpegCount",
            "sharedOfaCount",
            "gpuInstanceSliceCount",
            "computeInstanceSliceCount",
            "memorySizeMB",
        ),
    )
    return dev


def _gpm_reading(nv: Any, first: Any, second: Any) -> dict[str, Any]:
    """The metrics between two GPM samples, keyed by NVML_GPM_METRIC_ name; a failed metric is left out."""
    ids = [(getattr(nv, f"NVML_GPM_METRIC_{name}"), name) for name in RECORDED_GPM]
    request = nv.c_nvmlGpmMetricsGet_t()
    request.version = nv.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(ids)
    request.sample1, request.sample2 = first, second
    for i, (metric_id, _) in enumerate(ids):
        request.metrics[i].metricId = metric_id
    nv.nvmlGpmMetricsGet(request)
    return {
        name: round(float(request.metrics[i].value), 3)
        for i, (_, name) in enumerate(ids)
        if int(request.metrics[i].nvmlReturn) == 0
    }


def record_gpm(nv: Any, recording: dict[str, Any], handles: list[Any], interval_s: float = 1.0) -> None:
    """Add one GPM reading over ``interval_s`` s to each device of ``recording`` whose GPU has GPM.

    ``handles`` are the physical GPUs' handles in the recording's order. A device without GPM
    gets nothing (the replay then answers NOT_SUPPORTED); a failure is stored as its error."""
    pairs: list[tuple[dict[str, Any], Any, Any, Any]] = []  # (device data, take(sample), first, second)
    for dev, handle in zip(recording["devices"], handles, strict=True):
        support = dev.get("nvmlGpmQueryDeviceSupport")
        if not isinstance(support, dict) or not support.get("isSupportedDevice"):
            continue
        targets: list[tuple[dict[str, Any], Callable[[Any], Any]]] = [(dev, partial(nv.nvmlGpmSampleGet, handle))]
        for mig in dev.get("mig_devices", []):
            gi = mig.get("nvmlDeviceGetGpuInstanceId")
            if isinstance(gi, int):
                targets.append((mig, partial(nv.nvmlGpmMigSampleGet, handle, gi)))
        for data, take in targets:
            try:
                first, second = nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()
                take(first)
            except nv.NVMLError as err:
                data["gpm_readings"] = {"nvml_error": getattr(err, "value", -1), "message": str(err)}
                continue
            pairs.append((data, take, first, second))
    if pairs:
        time.sleep(interval_s)
    for data, take, first, second in pairs:
        try:
            take(second)
            data["gpm_readings"] = [_gpm_reading(nv, first, second)]
        except nv.NVMLError as err:
            data["gpm_readings"] = {"nvml_error": getattr(err, "value", -1), "message": str(err)}
        finally:
            for sample in (first, second):
                try:
                    nv.nvmlGpmSampleFree(sample)
                except nv.NVMLError:
                    pass


def record(nvml: Any = None, note: str = "", gpm_interval_s: float = 1.0) -> dict[str, Any]:
    """Query every call NvidiaCollector makes, on every GPU and MIG device, into a JSON-able dict;
    GPM metrics over ``gpm_interval_s`` s where the GPU has GPM."""
    nv = pynvml if nvml is None else nvml
    nv.nvmlInit()
    try:
        pids: set[int] = set()
        recording: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "meta": {"recorded_at": time.time(), "source": "nvml", "note": note},
            "nvmlSystemGetDriverVersion": _call(nv, "nvmlSystemGetDriverVersion"),
            "devices": [],
        }
        handles = []
        for index in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            handles.append(handle)
            dev = _record_device(nv, handle, pids)
            event_set = _call(nv, "nvmlEventSetCreate")
            if isinstance(event_set, dict) and "nvml_error" in event_set:
                dev["nvmlDeviceRegisterEvents"] = event_set
            else:
                dev["nvmlDeviceRegisterEvents"] = _call(
                    nv,
                    "nvmlDeviceRegisterEvents",
                    handle,
                    nv.nvmlEventTypeXidCriticalError,
                    event_set,
                    convert=lambda _: True,
                )
                if dev["nvmlDeviceRegisterEvents"] is None:
                    dev["nvmlDeviceRegisterEvents"] = True
                _call(nv, "nvmlEventSetFree", event_set)
            mode = dev["nvmlDeviceGetMigMode"]
            max_count = dev["nvmlDeviceGetMaxMigDeviceCount"]
            if (
                isinstance(mode, list)
                and mode
                and mode[0] == getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1)
                and isinstance(max_count, int)
            ):
                dev["mig_devices"] = []
                for slot in range(max_count):
                    child = _call(nv, "nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
                    if isinstance(child, dict) and "nvml_error" in child:
                        continue
                    mig = _record_device(nv, child, pids)
                    mig["slot"] = slot
                    dev["mig_devices"].append(mig)
            recording["devices"].append(dev)
        recording["nvmlSystemGetProcessName"] = {
            str(pid): _call(nv, "nvmlSystemGetProcessName", pid) for pid in sorted(pids)
        }
        record_gpm(nv, recording, handles, gpm_interval_s)
        return recording
    finally:
        try:
            nv.nvmlShutdown()
        except nv.NVMLError:
            pass


# -- nvidia-smi -q ---------------------------------------------------------------------------


class _Node:
    __slots__ = ("key", "value", "children")

    def __init__(self, key: str, value: str | None) -> None:
        self.key = key
        self.value = value
        self.children: list[_Node] = []

    def get(self, *path: str) -> _Node | None:
        node: _Node | None = self
        for key in path:
            node = next((c for c in node.children if c.key == key), None) if node else None
        return node

    def value_at(self, *path: str) -> str | None:
        node = self.get(*path)
        return node.value if node else None


_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>\S.*?)\s+:(?:\s(?P<value>.*))?$")


def _parse_tree(text: str) -> _Node:
    root = _Node("", None)
    stack: list[tuple[int, _Node]] = [(-1, root)]
    for raw in text.splitlines():
        if not raw.strip() or raw.startswith(("#", "=")):
            continue
        match = _LINE.match(raw)
        if match:
            indent, key, value = len(match["indent"]), match["key"].strip(), (match["value"] or "").strip()
        else:
            indent, key, value = len(raw) - len(raw.lstrip()), raw.strip(), None
        node = _Node(key, value)
        while stack[-1][0] >= indent:
            stack.pop()
        stack[-1][1].children.append(node)
        stack.append((indent, node))
    return root


def _number(text: str | None, scale: float = 1.0) -> Any:
    """The leading number of ``"69.85 W"`` times scale; an NVML error dict for N/A and kin."""
    match = re.match(r"^\s*(-?\d+(?:\.\d+)?)\b", text or "")
    if not match:
        return _error(_NOT_SUPPORTED)
    value = float(match.group(1)) * scale
    return round(value) if scale != 1.0 or "." not in match.group(1) else value


def _is_error(value: Any) -> bool:
    return isinstance(value, dict) and "nvml_error" in value


def _first(node: _Node, *paths: tuple[str, ...]) -> str | None:
    for path in paths:
        value = node.value_at(*path)
        if value is not None and not _is_error(_number(value)):
            return value
    return None


def _memory(node: _Node | None) -> tuple[Any, Any]:
    if node is None:
        return _error(_NOT_SUPPORTED), _error(_NOT_SUPPORTED)
    parts = {k: _number(node.value_at(k), _MIB) for k in ("Total", "Reserved", "Used", "Free")}
    if any(_is_error(parts[k]) for k in ("Total", "Used", "Free")):
        return _error(_NOT_SUPPORTED), _error(_NOT_SUPPORTED)
    reserved = 0 if _is_error(parts["Reserved"]) else parts["Reserved"]
    v1 = {"total": parts["Total"], "free": parts["Free"], "used": parts["Total"] - parts["Free"]}
    v2 = {"total": parts["Total"], "reserved": reserved, "free": parts["Free"], "used": parts["Used"]}
    return v1, v2


def _mode(value: str | None) -> Any:
    return {"Enabled": 1, "Disabled": 0}.get(value or "", _error(_NOT_SUPPORTED))


def _reasons(node: _Node | None) -> Any:
    if node is None:
        return _error(_NOT_SUPPORTED)
    mask, seen = 0, False

    def walk(n: _Node) -> None:
        nonlocal mask, seen
        for child in n.children:
            if child.key in _REASON_BITS and child.value in ("Active", "Not Active"):
                seen = True
                if child.value == "Active":
                    mask |= _REASON_BITS[child.key]
            walk(child)

    walk(node)
    return mask if seen else _error(_NOT_SUPPORTED)


def _ecc_volatile(node: _Node | None) -> dict[str, Any]:
    """Corrected and uncorrected volatile totals from the newer (SRAM/DRAM) or older layout."""
    failed = {"corrected_volatile": _error(_NOT_SUPPORTED), "uncorrected_volatile": _error(_NOT_SUPPORTED)}
    if node is None:
        return failed
    corrected = uncorrected = 0
    found = False
    for child in node.children:
        if child.children:  # older drivers: "Single Bit" / "Double Bit" blocks with a "Total"
            total = _number(child.value_at("Total"))
            if _is_error(total):
                continue
            found = True
            if child.key.startswith("Single"):
                corrected += total
            elif child.key.startswith("Double"):
                uncorrected += total
            continue
        count = _number(child.value)
        if _is_error(count):
            continue
        found = True
        if "Uncorrectable" in child.key:
            uncorrected += count
        elif "Correctable" in child.key:
            corrected += count
    if not found:
        return failed
    return {"corrected_volatile": corrected, "uncorrected_volatile": uncorrected}


def _processes(node: _Node | None) -> list[dict[str, Any]]:
    procs: list[dict[str, Any]] = []
    if node is None:
        return procs
    gi = ci = None
    for child in node.children:
        if child.key == "GPU instance ID":
            gi = _number(child.value)
            gi = None if _is_error(gi) else gi
        elif child.key == "Compute instance ID":
            ci = _number(child.value)
            ci = None if _is_error(ci) else ci
        elif child.key == "Process ID":
            used = _number(child.value_at("Used GPU Memory"), _MIB)
            procs.append(
                {
                    "pid": int(child.value or 0),
                    "type": child.value_at("Type") or "",
                    "name": child.value_at("Name"),
                    "usedGpuMemory": None if _is_error(used) else used,
                    "gpuInstanceId": gi,
                    "computeInstanceId": ci,
                }
            )
    return procs


def _split_procs(procs: list[dict[str, Any]], dev: dict[str, Any]) -> None:
    keep = ("pid", "usedGpuMemory", "gpuInstanceId", "computeInstanceId")
    dev["nvmlDeviceGetComputeRunningProcesses"] = [{k: p[k] for k in keep} for p in procs if "C" in p["type"]]
    dev["nvmlDeviceGetGraphicsRunningProcesses"] = [{k: p[k] for k in keep} for p in procs if "G" in p["type"]]


def parse_nvidia_smi_list(text: str) -> dict[tuple[int, int | None], dict[str, str]]:
    """``nvidia-smi -L`` -> {(gpu, None): {name, uuid}, (gpu, mig_device): {profile, uuid}}."""
    found: dict[tuple[int, int | None], dict[str, str]] = {}
    gpu = -1
    for line in text.splitlines():
        match = re.match(r"^GPU (\d+): (.*) \(UUID: (\S+)\)", line)
        if match:
            gpu = int(match.group(1))
            found[(gpu, None)] = {"name": match.group(2), "uuid": match.group(3)}
            continue
        match = re.match(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (\S+)\)", line)
        if match and gpu >= 0:
            found[(gpu, int(match.group(2)))] = {"profile": match.group(1), "uuid": match.group(3)}
    return found


def _profile_slices(profile: str) -> tuple[int, int] | None:
    match = re.match(r"^(?:(\d+)c\.)?(\d+)g\.", profile)
    if not match:
        return None
    gi = int(match.group(2))
    return (int(match.group(1)) if match.group(1) else gi), gi


def _mig_device(
    node: _Node, parent_name: str | None, procs: list[dict[str, Any]], listed: dict[str, str] | None
) -> dict[str, Any]:
    slot = int(node.value_at("Index") or 0)
    gi = _number(node.value_at("GPU Instance ID"))
    ci = _number(node.value_at("Compute Instance ID"))
    v1, v2 = _memory(node.get("Shared FB Memory Usage"))
    mig: dict[str, Any] = {
        "slot": slot,
        "nvmlDeviceGetGpuInstanceId": gi,
        "nvmlDeviceGetComputeInstanceId": ci,
        "nvmlDeviceGetMemoryInfo": v1,
        "nvmlDeviceGetMemoryInfo_v2": v2,
        "nvmlDeviceRegisterEvents": _error(_NOT_SUPPORTED),
    }
    _split_procs([p for p in procs if p["gpuInstanceId"] == gi and not _is_error(gi)], mig)
    if listed:
        mig["nvmlDeviceGetUUID"] = listed["uuid"]
        mig["nvmlDeviceGetName"] = f"{parent_name} MIG {listed['profile']}"
        slices = _profile_slices(listed["profile"])
        shared = node.get("Device Attributes", "Shared")
        if slices and shared is not None and not _is_error(v1):

            def count(key: str) -> int:
                value = _number(shared.value_at(key))
                return 0 if _is_error(value) else value

            mig["nvmlDeviceGetAttributes"] = {
                "multiprocessorCount": count("Multiprocessor count"),
                "sharedCopyEngineCount": count("Copy Engine count"),
                "sharedDecoderCount": count("Decoder count"),
                "sharedEncoderCount": count("Encoder count"),
                "sharedJpegCount": count("JPG count"),
                "sharedOfaCount": count("OFA count"),
                "gpuInstanceSliceCount": slices[1],
                "computeInstanceSliceCount": slices[0],
                "memorySizeMB": v1["total"] // _MIB,
            }
    return mig


def nvidia_smi_q_to_recording(text: str, listing: str | None = None) -> dict[str, Any]:
    """Build a recording from ``nvidia-smi -q`` text or ``nvidia-smi -q -x`` XML (and ``nvidia-smi
    -L`` for MIG names); raise CaptureFormatError for any other output."""
    kind = capture_kind(text)
    if kind == "xml":
        return _recording_from_tree(
            _xml_tree(text), parse_nvidia_smi_list(listing) if listing else {}, "nvidia-smi -q -x"
        )
    if kind != "q":
        raise CaptureFormatError(_UNREADABLE[kind])
    return _recording_from_tree(_parse_tree(text), parse_nvidia_smi_list(listing) if listing else {}, "nvidia-smi -q")


def _recording_from_tree(
    root: _Node, listed: dict[tuple[int, int | None], dict[str, str]], source: str
) -> dict[str, Any]:
    driver = root.value_at("Driver Version")
    recording: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "meta": {"source": source, "timestamp": root.value_at("Timestamp")},
        "nvmlSystemGetDriverVersion": driver if driver else _error(_NOT_SUPPORTED),
        "devices": [],
        "nvmlSystemGetProcessName": {},
    }
    gpus = [n for n in root.children if n.key.startswith("GPU ") and n.value is None]
    for index, gpu in enumerate(gpus):
        name = gpu.value_at("Product Name")
        v1, v2 = _memory(gpu.get("FB Memory Usage"))
        util = {
            "gpu": _number(gpu.value_at("Utilization", "GPU")),
            "memory": _number(gpu.value_at("Utilization", "Memory")),
        }
        power = gpu.get("GPU Power Readings") or gpu.get("Power Readings")
        draw = _first(power, ("Average Power Draw",), ("Power Draw",), ("Instantaneous Power Draw",)) if power else None
        limit = _first(power, ("Current Power Limit",), ("Enforced Power Limit",)) if power else None
        clocks = gpu.get("Clocks")
        procs = _processes(gpu.get("Processes"))
        dev: dict[str, Any] = {
            "nvmlDeviceGetName": name if name else _error(_NOT_SUPPORTED),
            "nvmlDeviceGetUUID": gpu.value_at("GPU UUID") or _error(_NOT_SUPPORTED),
            "nvmlDeviceGetMemoryInfo": v1,
            "nvmlDeviceGetMemoryInfo_v2": v2,
            "nvmlDeviceGetUtilizationRates": _error(_NOT_SUPPORTED)
            if any(_is_error(v) for v in util.values())
            else util,
            "nvmlDeviceGetPowerUsage": _number(draw, 1000.0),
            "nvmlDeviceGetEnforcedPowerLimit": _number(limit, 1000.0),
            "nvmlDeviceGetTemperature": {"gpu": _number(gpu.value_at("Temperature", "GPU Current Temp"))},
            "nvmlDeviceGetClockInfo": {
                key: _number(clocks.value_at(label) if clocks else None)
                for key, label in (("graphics", "Graphics"), ("sm", "SM"), ("mem", "Memory"))
            },
            "nvmlDeviceGetCurrentClocksEventReasons": _reasons(
                gpu.get("Clocks Event Reasons") or gpu.get("Clocks Throttle Reasons")
            ),
            "nvmlDeviceGetEccMode": _error(_NOT_SUPPORTED),
            "nvmlDeviceGetTotalEccErrors": _ecc_volatile(gpu.get("ECC Errors", "Volatile")),
            "nvmlDeviceGetMigMode": _error(_NOT_SUPPORTED),
            "nvmlDeviceRegisterEvents": True,
        }
        ecc = (_mode(gpu.value_at("ECC Mode", "Current")), _mode(gpu.value_at("ECC Mode", "Pending")))
        if not _is_error(ecc[0]):
            dev["nvmlDeviceGetEccMode"] = [ecc[0], 0 if _is_error(ecc[1]) else ecc[1]]
        mig_mode = (_mode(gpu.value_at("MIG Mode", "Current")), _mode(gpu.value_at("MIG Mode", "Pending")))
        if not _is_error(mig_mode[0]):
            dev["nvmlDeviceGetMigMode"] = [mig_mode[0], 0 if _is_error(mig_mode[1]) else mig_mode[1]]
        _memory_health(gpu, dev)
        _split_procs(procs, dev)
        for proc in procs:
            if proc["name"]:
                recording["nvmlSystemGetProcessName"][str(proc["pid"])] = proc["name"]
        migs = [n for n in gpu.children if n.key == "MIG Device"]
        if mig_mode[0] == 1:
            dev["mig_devices"] = [
                _mig_device(n, name, procs, listed.get((index, int(n.value_at("Index") or 0)))) for n in migs
            ]
            # H100/A100 have seven MIG slots; the empty ones answer NOT_FOUND, as on real NVML.
            dev["nvmlDeviceGetMaxMigDeviceCount"] = max(7, len(migs))
        recording["devices"].append(dev)
    return recording


def _memory_health(gpu: _Node, dev: dict[str, Any]) -> None:
    """Retired pages, row remapping and the clocks-event counters as NVML would return them."""
    retired = gpu.get("Retired Pages")
    if retired is not None:
        single = _number(retired.value_at("Single Bit ECC"))
        double = _number(retired.value_at("Double Bit ECC"))
        pending = {"Yes": 1, "No": 0}.get(retired.value_at("Pending Page Blacklist") or "")
        if not _is_error(single) and not _is_error(double) and pending is not None:
            # The capture counts pages without their addresses: n entries stand for n pages.
            dev["nvmlDeviceGetRetiredPages"] = {"single_bit": list(range(single)), "double_bit": list(range(double))}
            dev["nvmlDeviceGetRetiredPagesPendingStatus"] = pending
    rows = gpu.get("Remapped Rows")
    if rows is not None and rows.children:
        yes_no = {"Yes": 1, "No": 0}
        values = [
            _number(rows.value_at("Correctable Error")),
            _number(rows.value_at("Uncorrectable Error")),
            yes_no.get(rows.value_at("Pending") or "", _error(_NOT_SUPPORTED)),
            yes_no.get(rows.value_at("Remapping Failure Occurred") or "", _error(_NOT_SUPPORTED)),
        ]
        if not any(_is_error(v) for v in values):
            dev["nvmlDeviceGetRemappedRows"] = values
    counters = gpu.get("Clocks Event Reasons Counters")
    if counters is not None:
        found = {}
        for label, field_id in THROTTLE_FIELDS.items():
            us = _number(counters.value_at(label))
            if not _is_error(us):
                found[str(field_id)] = int(us) * 1000  # nvidia-smi shows µs, NVML counts ns
        if found:
            dev["nvmlDeviceGetFieldValues"] = [{"timestamp_us": 0, "values": found}]


# -- what a capture is -------------------------------------------------------------------------

_UNREADABLE = {
    "csv": "this looks like `nvidia-smi --query-gpu` CSV, which names only the fields it was asked for; "
    "send the output of `nvidia-smi -q` (or `nvidia-smi -q -x` for XML) instead",
    "table": "this looks like the default `nvidia-smi` table, which leaves out most fields; "
    "send the output of `nvidia-smi -q` (or `nvidia-smi -q -x` for XML) instead",
    "empty": "the capture is empty; send the output of `nvidia-smi -q` (or `nvidia-smi -q -x`)",
    "unknown": "this is neither `nvidia-smi -q` text nor `nvidia-smi -q -x` XML (no 'NVSMI LOG' header, "
    "no 'Attached GPUs' line, no <nvidia_smi_log> element); send one of those",
}


def capture_kind(text: str) -> str:
    """What an nvidia-smi capture is: "q" (-q text), "xml" (-q -x), "csv" (--query-*), "table"
    (the default table), "empty" or "unknown"."""
    head = text.lstrip("\ufeff \t\r\n")
    if not head:
        return "empty"
    if head.startswith("<?xml") or "<nvidia_smi_log" in head[:2000]:
        return "xml"
    if re.search(r"^=+NVSMI LOG=+\s*$", text, re.MULTILINE) or re.search(r"^Attached GPUs\s+:", text, re.MULTILINE):
        return "q"
    if "NVIDIA-SMI" in head[:2000] and re.search(r"^\+[-=+]+\+\s*$", text, re.MULTILINE):
        return "table"
    first = head.splitlines()[0]
    if first.count(",") >= 1 and not first.rstrip().endswith(":"):
        return "csv"
    return "unknown"


# nvidia-smi -q -x element -> the label nvidia-smi -q prints, so both go through one reader.
_XML_LABELS = {
    "timestamp": "Timestamp",
    "driver_version": "Driver Version",
    "product_name": "Product Name",
    "uuid": "GPU UUID",
    "fb_memory_usage": "FB Memory Usage",
    "total": "Total",
    "reserved": "Reserved",
    "used": "Used",
    "free": "Free",
    "utilization": "Utilization",
    "gpu_util": "GPU",
    "memory_util": "Memory",
    "gpu_power_readings": "GPU Power Readings",
    "power_readings": "Power Readings",
    "power_draw": "Power Draw",
    "average_power_draw": "Average Power Draw",
    "instant_power_draw": "Instantaneous Power Draw",
    "current_power_limit": "Current Power Limit",
    "enforced_power_limit": "Enforced Power Limit",
    "temperature": "Temperature",
    "gpu_temp": "GPU Current Temp",
    "clocks": "Clocks",
    "graphics_clock": "Graphics",
    "sm_clock": "SM",
    "mem_clock": "Memory",
    "clocks_event_reasons": "Clocks Event Reasons",
    "clocks_throttle_reasons": "Clocks Throttle Reasons",
    "clocks_event_reasons_counters": "Clocks Event Reasons Counters",
    "ecc_mode": "ECC Mode",
    "current_ecc": "Current",
    "pending_ecc": "Pending",
    "ecc_errors": "ECC Errors",
    "ecc_error_count": "ECC Errors",
    "volatile": "Volatile",
    "volatile_count": "Volatile",
    "sram_correctable": "SRAM Correctable",
    "sram_uncorrectable": "SRAM Uncorrectable",
    "dram_correctable": "DRAM Correctable",
    "dram_uncorrectable": "DRAM Uncorrectable",
    "single_bit": "Single Bit",
    "double_bit": "Double Bit",
    "mig_mode": "MIG Mode",
    "current_mig": "Current",
    "pending_mig": "Pending",
    "mig_device": "MIG Device",
    "index": "Index",
    "gpu_instance_id": "GPU Instance ID",
    "compute_instance_id": "Compute Instance ID",
    "device_attributes": "Device Attributes",
    "shared": "Shared",
    "multiprocessor_count": "Multiprocessor count",
    "copy_engine_count": "Copy Engine count",
    "encoder_count": "Encoder count",
    "decoder_count": "Decoder count",
    "ofa_count": "OFA count",
    "jpg_count": "JPG count",
    "remapped_rows": "Remapped Rows",
    "remapped_row_corr": "Correctable Error",
    "remapped_row_unc": "Uncorrectable Error",
    "remapped_row_pending": "Pending",
    "remapped_row_failure": "Remapping Failure Occurred",
    "processes": "Processes",
}
_XML_REASONS = {  # clocks_event_reason_<x> / clocks_throttle_reason_<x>
    "gpu_idle": "Idle",
    "applications_clocks_setting": "Applications Clocks Setting",
    "sw_power_cap": "SW Power Cap",
    "hw_slowdown": "HW Slowdown",
    "hw_thermal_slowdown": "HW Thermal Slowdown",
    "hw_power_brake_slowdown": "HW Power Brake Slowdown",
    "sync_boost": "Sync Boost",
    "sw_thermal_slowdown": "SW Thermal Slowdown",
    "display_clocks_setting": "Display Clock Setting",
}


def _xml_label(tag: str) -> str:
    match = re.match(r"^clocks_(?:event|throttle)_reason_(.+)$", tag)
    if match and match.group(1) in _XML_REASONS:
        return _XML_REASONS[match.group(1)]
    return _XML_LABELS.get(tag, tag)


def _xml_node(element: ET.Element, in_mig: bool = False) -> _Node:
    label = _xml_label(element.tag)
    if in_mig and element.tag == "fb_memory_usage":
        label = "Shared FB Memory Usage"
    text = (element.text or "").strip()
    node = _Node(label, text if len(element) == 0 else None)
    for child in element:
        if child.tag == "mig_devices":  # -q prints each MIG device straight under its GPU
            node.children.extend(_xml_node(mig, in_mig=True) for mig in child)
        elif child.tag == "processes":
            node.children.append(_xml_processes(child))
        else:
            node.children.append(_xml_node(child, in_mig))
    return node


def _xml_processes(element: ET.Element) -> _Node:
    """``<process_info>`` elements in the flat order -q prints: instance ids, then the process."""
    node = _Node("Processes", None)
    for info in element.findall("process_info"):
        for tag, label in (("gpu_instance_id", "GPU instance ID"), ("compute_instance_id", "Compute instance ID")):
            if info.find(tag) is not None:
                node.children.append(_Node(label, (info.findtext(tag) or "").strip()))
        process = _Node("Process ID", (info.findtext("pid") or "").strip())
        for tag, label in (("type", "Type"), ("process_name", "Name"), ("used_memory", "Used GPU Memory")):
            process.children.append(_Node(label, (info.findtext(tag) or "").strip()))
        node.children.append(process)
    return node


def _xml_tree(text: str) -> _Node:
    # The DOCTYPE names a DTD file that is never fetched: ElementTree does not resolve entities.
    try:
        log = ET.fromstring(text.encode("utf-8"))
    except ET.ParseError as err:
        raise CaptureFormatError(f"the nvidia-smi -q -x XML does not parse ({err})") from None
    if log.tag != "nvidia_smi_log":
        raise CaptureFormatError(f"the XML's root is <{log.tag}>, not nvidia-smi's <nvidia_smi_log>")
    root = _Node("", None)
    for child in log:
        if child.tag == "gpu":
            gpu = _xml_node(child)
            gpu.key = f"GPU {child.get('id', '')}".strip()
            gpu.value = None
            root.children.append(gpu)
        else:
            root.children.append(_xml_node(child))
    return root


def from_nvidia_smi_q(text: str, listing: str | None = None) -> NvmlReplay:
    """A replay serving the values of one ``nvidia-smi -q`` text or ``-q -x`` XML output (N/A ->
    NOT_SUPPORTED); CaptureFormatError for any other output."""
    return NvmlReplay(nvidia_smi_q_to_recording(text, listing))


def capture_section(bundle: str, title: str) -> str:
    """The body of one ``# <title>`` section of an nvidia_gpu_exporter capture bundle."""
    lines = bundle.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"# {title}":
            start = i + 1
            while start < len(lines) and lines[start].startswith("#"):
                start += 1
            end = start
            while end < len(lines) and not lines[end].startswith("#" * 20):
                end += 1
            return "\n".join(lines[start:end]) + "\n"
    raise KeyError(title)
