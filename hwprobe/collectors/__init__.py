"""One collector interface, the explicit list of collectors, and the guard that runs them.

A collector reports static facts (``inventory()``) and one snapshot (``collect()``), both as
partial documents that :class:`Probe` merges::

    inventory() -> {"hostname": ..., ..., "accelerators": [{"index": 0, ...}]}
    collect()   -> {"system": {"cpu_percent": 3.5, ...}, "gpus": [{"index": 0, ...}]}

Missing hardware is quiet (one INFO line, then the collector is left out); a collector that
breaks is loud (a WARNING with the error, once per distinct error) and never stops the agent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("hwprobe")


class NotApplicable(Exception):
    """Raised by a collector's constructor when its hardware or driver is absent; str() says why."""


@runtime_checkable
class Collector(Protocol):
    name: str

    def inventory(self) -> dict[str, Any]:
        """Static facts: system fields and/or ``accelerators`` (a list of device dicts)."""
        ...

    def collect(self) -> dict[str, Any]:
        """One snapshot: ``system`` (metric -> value or None) and/or ``gpus`` (list of dicts)."""
        ...


def _system() -> Collector:
    from hwprobe.collectors.system import SystemCollector

    return SystemCollector()


def _nvidia() -> Collector:
    from hwprobe.collectors.nvidia import NvidiaCollector

    return NvidiaCollector()


def _apple() -> Collector:
    from hwprobe.collectors.apple import AppleCollector

    return AppleCollector()


# The collectors the agent uses, in the order their accelerators are numbered. Each factory
# imports its module lazily so that a host without NVIDIA never pays for pynvml.
COLLECTORS: tuple[tuple[str, Callable[[], Collector]], ...] = (
    ("system", _system),
    ("nvidia", _nvidia),
    ("apple", _apple),
)


class Probe:
    """Runs a fixed set of collectors, each one guarded, and merges their output."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors: list[Collector] = list(collectors)
        self._logged: set[tuple[str, str]] = set()
        self._offsets: dict[str, int] = {}
        self._inventory: dict[str, Any] | None = None
        # Facts measured outside the collectors (the storage read speed, found once in the
        # background), sent with every inventory from the moment they are known.
        self._extra: dict[str, Any] = {}

    def add_inventory(self, facts: dict[str, Any]) -> None:
        self._extra = {**self._extra, **facts}

    def _warn_once(self, name: str, what: str, err: BaseException) -> None:
        key = (name, f"{what}:{type(err).__name__}:{err}")
        if key not in self._logged:
            self._logged.add(key)
            log.warning("collector %s: %s failed: %s: %s", name, what, type(err).__name__, err)

    def inventory(self) -> dict[str, Any]:
        """Merged static facts of every collector; a collector that raises contributes nothing."""
        merged: dict[str, Any] = {"accelerators": []}
        offset = 0
        for collector in self.collectors:
            try:
                part = collector.inventory()
            except Exception as err:  # one broken collector must not hide the others
                self._warn_once(collector.name, "inventory", err)
                part = {}
            self._offsets[collector.name] = offset
            devices = part.get("accelerators") or []
            for local, device in enumerate(devices):
                merged["accelerators"].append({**device, "index": offset + local})
            offset += len(devices)
            for key, value in part.items():
                if key != "accelerators" and (value is not None or key not in merged):
                    merged[key] = value
        merged.update(self._extra)
        self._inventory = merged
        return merged

    def collect(self) -> dict[str, Any]:
        """One merged snapshot: ``{"ts": unix_s, "system": {...}, "gpus": [...]}``."""
        if self._inventory is None:
            self.inventory()
        system: dict[str, Any] = {}
        gpus: list[dict[str, Any]] = []
        for collector in self.collectors:
            try:
                part = collector.collect()
            except Exception as err:
                self._warn_once(collector.name, "collect", err)
                continue
            # A later collector fills or refines a system field, but its None never erases a
            # value an earlier one did read.
            for key, value in (part.get("system") or {}).items():
                if value is not None or key not in system:
                    system[key] = value
            offset = self._offsets.get(collector.name, 0)
            for device in part.get("gpus") or []:
                gpus.append({**device, "index": offset + device.get("index", 0)})
        return {"ts": time.time(), "system": system, "gpus": gpus}

    def close(self) -> None:
        """Release collector resources (NVML) where a collector has any."""
        for collector in self.collectors:
            close = getattr(collector, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as err:
                    self._warn_once(collector.name, "close", err)


def build_collectors(
    factories: Iterable[tuple[str, Callable[[], Collector]]] = COLLECTORS,
) -> list[Collector]:
    """Instantiate each factory; not applicable -> one INFO line, broken -> one WARNING."""
    built: list[Collector] = []
    for name, factory in factories:
        try:
            built.append(factory())
        except NotApplicable as why:
            log.info("collector %s: not applicable: %s", name, why)
        except Exception as err:
            log.warning("collector %s: failed to start: %s: %s", name, type(err).__name__, err)
    return built


def build_probe(
    factories: Iterable[tuple[str, Callable[[], Collector]]] = COLLECTORS,
) -> Probe:
    """A :class:`Probe` over the collectors that apply to this machine."""
    return Probe(build_collectors(factories))
