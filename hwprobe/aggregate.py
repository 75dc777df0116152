"""Fold 1 s snapshots into one sample per window, shaped as design.md's wire format.

Gauges become ``{"min", "mean", "max"}`` over the snapshots that could read them (None when
none could); ``last`` metrics keep the latest value that was read; ``throttle_reasons`` is the
OR of every bitmask seen; ``cpu_per_core_percent`` is the mean per core; ``processes`` are those
of the window's last snapshot.
"""

from __future__ import annotations

from typing import Any

from hwprobe.schema import GPU_GAUGES, GPU_METRICS, SYSTEM_GAUGES, SYSTEM_METRICS

_SYSTEM_LAST = tuple(m.name for m in SYSTEM_METRICS if m.kind == "last")
_GPU_LAST = tuple(m.name for m in GPU_METRICS if m.kind == "last" and m.name != "throttle_reasons")
MIN_INTERVAL_S = 0.001  # a window's shortest length on the wire (times are rounded to 1 ms)


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    low, high = min(values), max(values)
    # Rounding keeps the JSON short; the clamp keeps min <= mean <= max, which the server checks.
    mean = min(high, max(low, round(sum(values) / len(values), 3)))
    return {"min": low, "mean": mean, "max": high}


class _Series:
    """Values of one device (or of the host) over the window."""

    def __init__(self, gauges: tuple[str, ...]) -> None:
        self.gauges: dict[str, list[float]] = {name: [] for name in gauges}
        self.last: dict[str, Any] = {}
        self.throttle: int | None = None
        self.cores: list[list[float]] = []
        self.processes: Any = None
        self.index: int | None = None

    def add(self, values: dict[str, Any], last_names: tuple[str, ...]) -> None:
        for name, seen in self.gauges.items():
            value = values.get(name)
            if value is not None:
                seen.append(value)
        for name in last_names:
            value = values.get(name)
            if value is not None:
                self.last[name] = value
        reasons = values.get("throttle_reasons")
        if reasons is not None:
            self.throttle = (self.throttle or 0) | int(reasons)
        cores = values.get("cpu_per_core_percent")
        if cores:
            if len(self.cores) != len(cores):  # CPU hot-plug: start over rather than misalign
                self.cores = [[] for _ in cores]
            for bucket, value in zip(self.cores, cores, strict=True):
                bucket.append(value)


class Window:
    """Accumulates snapshots (``Probe.collect()`` output) between ``start_ts`` and ``close()``."""

    def __init__(self, start_ts: float) -> None:
        self.start_ts = start_ts
        self.count = 0
        self._system = _Series(SYSTEM_GAUGES)
        self._gpus: dict[Any, _Series] = {}
        self._order: list[Any] = []

    def add(self, snapshot: dict[str, Any]) -> None:
        """Take one snapshot: ``{"system": {...}, "gpus": [{"index", "uuid", ...}]}``."""
        self.count += 1
        self._system.add(snapshot.get("system") or {}, _SYSTEM_LAST)
        order = []
        for gpu in snapshot.get("gpus") or ():
            key = gpu.get("uuid") or f"index:{gpu.get('index')}"
            series = self._gpus.get(key)
            if series is None:
                series = self._gpus[key] = _Series(GPU_GAUGES)
            series.add(gpu, _GPU_LAST)
            series.index = gpu.get("index")
            series.processes = gpu.get("processes")
            order.append(key)
        # Devices in the order the last snapshot listed them, then any that vanished mid-window.
        self._order = order + [k for k in self._order if k not in order]

    def close(self, end_ts: float) -> dict[str, Any]:
        """The window's sample (without ``seq``, which the spool assigns). Times in Unix seconds."""
        system: dict[str, Any] = {name: _stats(self._system.gauges[name]) for name in SYSTEM_GAUGES}
        for name in _SYSTEM_LAST:
            system[name] = self._system.last.get(name)
        system["cpu_per_core_percent"] = (
            [round(sum(b) / len(b), 2) if b else None for b in self._system.cores] if self._system.cores else None
        )
        gpus = []
        for key in self._order:
            series = self._gpus[key]
            gpu: dict[str, Any] = {
                "index": series.index,
                "uuid": None if key.startswith("index:") else key,
            }
            for name in GPU_GAUGES:
                gpu[name] = _stats(series.gauges[name])
            for name in _GPU_LAST:
                gpu[name] = series.last.get(name)
            gpu["throttle_reasons"] = series.throttle
            gpu["processes"] = series.processes
            gpus.append(gpu)
        gpus.sort(key=lambda g: (g["index"] is None, g["index"]))
        return {
            "ts": round(end_ts, 3),
            # Never 0, which the server refuses (and the spool would dead-letter a real window): a
            # window closed within half a millisecond of its start, e.g. one flushed for a job that
            # ended just after the last window left, is 1 ms, the wire format's resolution.
            "interval_s": max(MIN_INTERVAL_S, round(end_ts - self.start_ts, 3)),
            "count": self.count,
            "system": system,
            "gpus": gpus,
        }
