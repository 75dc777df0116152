"""A stand-in NVML *source*: the functions NvidiaCollector calls, answered from a recording.

Two ways to build one:

* :func:`from_recording` takes the JSON document that :func:`record` writes while querying a
  real NVML (``bench/gpu_check.py`` does this on a real GPU);
* :func:`from_nvidia_smi_q` parses real ``nvidia-smi -q`` text (optionally with ``nvidia-smi
  -L`` text for MIG UUIDs and profiles). A field shown ``N/A`` raises NOT_SUPPORTED, as NVML
  itself would.

Recording format (``"format": "hwprobe.nvml_recording", "version": 1``): the top level and each
device map an NVML function name to what it returned; a failed call is stored as
``{"nvml_error": <NVML return code>, "message": "..."}`` and an absent key reads as
NOT_SUPPORTED. Calls with an enum argument store a small dict keyed by that argument's name
(``nvmlDeviceGetClockInfo: {"graphics", "sm", "mem"}`` in MHz, ``nvmlDeviceGetTemperature:
{"gpu"}`` in C, ``nvmlDeviceGetTotalEccErrors: {"corrected_volatile", "uncorrected_volatile"}``).
Memory is in bytes, power in mW, as NVML returns them. MIG devices sit in their parent's
``mig_devices`` list with their ``slot``.

Exceptions and constants are the real ``pynvml`` ones (nvidia-ml-py imports without a driver).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
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


def record(nvml: Any = None, note: str = "") -> dict[str, Any]:
    """Query every call NvidiaCollector makes, on every GPU and MIG device, into a JSON-able dict."""
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
        for index in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
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
    """Build a recording from ``nvidia-smi -q`` text (and ``nvidia-smi -L`` for MIG names)."""
    root = _parse_tree(text)
    listed = parse_nvidia_smi_list(listing) if listing else {}
    driver = root.value_at("Driver Version")
    recording: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "meta": {"source": "nvidia-smi -q", "timestamp": root.value_at("Timestamp")},
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


def from_nvidia_smi_q(text: str, listing: str | None = None) -> NvmlReplay:
    """A replay serving the values of one ``nvidia-smi -q`` output (N/A -> NOT_SUPPORTED)."""
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
