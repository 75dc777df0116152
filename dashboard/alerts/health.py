"""GPU health rules: XID errors with their meaning, uncorrectable ECC, retired pages and row
remapping, sustained throttling, a GPU NVML no longer lists, and NVML errors reading a device.

They read what the agent reports per GPU (hwprobe/schema.py): counters since the agent started
(``xid_errors``, ``nvml_errors``) through a watch that notes when they grew, the rest from the
newest window or, for throttling, from the raw windows of the last ``threshold`` minutes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .findings import Finding, Fleet, Span, Verdict, spans
from .models import AlertRule, GpuWatch, KnownGpu

# NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors): what it means, what to do.
XID_MEANING: dict[int, tuple[str, str]] = {
    13: ("graphics engine exception, usually the application (illegal memory access)", "check the job's code"),
    31: ("GPU memory page fault, usually the application", "check the job's code; repeated on many jobs: reset"),
    43: ("GPU stopped processing, a fault of the user application", "no action for the GPU"),
    45: ("preemptive cleanup after earlier errors or a killed process", "look at the XID before it"),
    48: ("double-bit ECC error (uncorrectable)", "drain and reset the GPU; RMA if it comes back"),
    61: ("internal micro-controller breakpoint or warning", "reset the GPU; update the driver if it repeats"),
    62: ("internal micro-controller halt", "drain and reset the GPU"),
    63: ("ECC page retirement or row remapping recorded", "drain and reset the GPU to apply it"),
    64: ("ECC page retirement or row remapper recording failure", "drain the GPU and open an RMA"),
    74: ("NVLink error", "check the NVLink bridge or fabric; reset the GPUs"),
    79: ("GPU has fallen off the bus", "drain the machine and reboot; check power and PCIe seating"),
    92: ("high single-bit ECC error rate", "watch it; drain and reset if uncorrectable errors follow"),
    94: ("contained ECC error: only the affected application was stopped", "reset the GPU when it is idle"),
    95: ("uncontained ECC error: every application on the GPU is affected", "drain and reset the GPU now"),
    109: ("context switch timeout", "check the job; reset the GPU if it repeats"),
    119: ("GSP RPC timeout (GPU System Processor firmware)", "drain and reset the GPU; update the driver"),
    120: ("GSP error", "drain and reset the GPU; update the driver"),
}
NVML_ERROR_NAMES = {
    1: "not initialised",
    2: "invalid argument",
    4: "no permission",
    8: "insufficient power",
    9: "driver not loaded",
    10: "timeout",
    11: "interrupt issue",
    14: "corrupted InfoROM",
    15: "GPU is lost",
    16: "GPU reset required",
    17: "operating system error",
    18: "library and driver versions differ",
    20: "out of memory",
    999: "unknown error",
}
GPU_IS_LOST = 15
SUSTAINED_THROTTLE_PERCENT = 50.0  # the span's mean share of time with clocks held down


def xid_meaning(code: int | None) -> str:
    """'XID 79 (GPU has fallen off the bus): drain the machine and reboot; …' for an alert message."""
    if not code:
        return "XID"
    meaning = XID_MEANING.get(code)
    if meaning is None:
        return f"XID {code} (see NVIDIA's XID catalogue)"
    return f"XID {code} ({meaning[0]}): {meaning[1]}"


def nvml_error_name(code: int | None) -> str:
    return NVML_ERROR_NAMES.get(code or 0, f"NVML error {code}")


@dataclass(slots=True)
class _Watch:
    """A GpuWatch as a counter rule reads and changes it: a plain record (pk None: not stored yet).

    A fleet's watches are read as rows, not model instances: at 3,000 machines building 24,000
    GpuWatch objects was most of the rule's 0.4 s a run (bench/alerts.py)."""

    pk: int | None
    value: int
    increased_at: datetime | None
    detail: int | None


def _counter(
    rule: AlertRule,
    now: datetime,
    fleet: Fleet,
    field: str,
    detail_field: str,
    physical_only: bool,
    describe: Callable[[str, int, _Watch], str],
) -> Verdict:
    """GPUs whose counter ``field`` (since the agent started) grew in the last ``threshold`` minutes.

    The first look takes 0 as the baseline, so counts from before the rule existed are news once;
    a count that went down means the agent restarted, and what it shows now is new."""
    verdict = Verdict()
    quiet = timedelta(minutes=rule.threshold)
    watches = {
        (machine_id, index): _Watch(pk, value, increased_at, detail)
        for machine_id, index, pk, value, increased_at, detail in GpuWatch.objects.filter(rule=rule).values_list(
            "machine_id", "gpu_index", "pk", "value", "increased_at", "detail"
        )
    }
    new: list[GpuWatch] = []
    changed: list[GpuWatch] = []
    for m in fleet.machines(rule, reported=True):
        online = m.is_online(now)
        for gpu in fleet.gpu_rows(m, physical_only):
            index, value = gpu["index"], gpu.get(field)
            key = f"machine:{m.pk}:gpu:{index}"
            watch = watches.get((m.pk, index))
            if value is not None:
                if watch is None:
                    watch = watches[(m.pk, index)] = _Watch(None, 0, None, None)
                grew = value > watch.value or (value < watch.value and value > 0)
                if grew:
                    watch.increased_at, watch.detail = now, gpu.get(detail_field)
                if watch.pk is None:
                    watch.value = value
                    new.append(_stored(rule, m.pk, index, watch))
                elif value != watch.value:  # grown, or reset by an agent restart
                    watch.value = value
                    changed.append(_stored(rule, m.pk, index, watch))
            if not online or (value is None and watch is None):
                verdict.unknown.add(key)
                continue
            if watch is not None and watch.increased_at is not None and now - watch.increased_at < quiet:
                verdict.firing.append(Finding(key, describe(m.name, index, watch), m.pk, index))
    GpuWatch.objects.bulk_create(new, batch_size=1000)
    GpuWatch.objects.bulk_update(changed, ["value", "increased_at", "detail"], batch_size=500)
    return verdict


def _stored(rule: AlertRule, machine_id: int, index: int, watch: _Watch) -> GpuWatch:
    return GpuWatch(
        pk=watch.pk,
        rule=rule,
        machine_id=machine_id,
        gpu_index=index,
        value=watch.value,
        increased_at=watch.increased_at,
        detail=watch.detail,
    )


def gpu_xid(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """A new XID on a GPU; open until ``threshold`` minutes pass without another."""

    def describe(name: str, index: int, watch: _Watch) -> str:
        return f"{name} GPU {index}: {xid_meaning(watch.detail)} ({watch.value} XID event(s) since the agent started)"

    return _counter(rule, now, fleet, "xid_errors", "xid_last", True, describe)


def gpu_nvml_errors(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """NVML calls failing on a device; open until ``threshold`` minutes pass without another."""

    def describe(name: str, index: int, watch: _Watch) -> str:
        return (
            f"{name} GPU {index}: NVML cannot read the device ({nvml_error_name(watch.detail)}; "
            f"{watch.value} failed call(s) since the agent started)"
        )

    return _counter(rule, now, fleet, "nvml_errors", "nvml_last_error", False, describe)


def _latest_condition(
    rule: AlertRule, now: datetime, fleet: Fleet, fields: tuple[str, ...], judge: Callable[[dict[str, Any]], str | None]
) -> Verdict:
    """Physical GPUs whose newest window ``judge`` finds wrong (it returns what is wrong, or None)."""
    verdict = Verdict()
    for m in fleet.machines(rule, reported=True):
        online = m.is_online(now)
        for gpu in fleet.gpu_rows(m):
            key = f"machine:{m.pk}:gpu:{gpu['index']}"
            if not online or all(gpu.get(f) is None for f in fields):
                verdict.unknown.add(key)
                continue
            wrong = judge(gpu)
            if wrong:
                verdict.firing.append(Finding(key, f"{m.name} GPU {gpu['index']}: {wrong}", m.pk, gpu["index"]))
    return verdict


def gpu_ecc_uncorrectable(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """More volatile uncorrectable ECC errors than ``threshold`` since the driver loaded."""

    def judge(gpu: dict[str, Any]) -> str | None:
        count = gpu.get("ecc_uncorrected_errors")
        if count is not None and count > rule.threshold:
            return f"{count} uncorrectable ECC error(s) since the driver loaded"
        return None

    return _latest_condition(rule, now, fleet, ("ecc_uncorrected_errors",), judge)


def gpu_memory_remap(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """A row remap or page retirement pending or failed, or at least ``threshold`` retired pages."""

    def judge(gpu: dict[str, Any]) -> str | None:
        wrong = []
        if gpu.get("row_remap_failed"):
            wrong.append("row remapping failed")
        if gpu.get("row_remap_pending"):
            wrong.append(
                f"a row remap is pending a GPU reset ({gpu.get('remapped_rows_uncorrectable') or 0} rows "
                "remapped for uncorrectable errors)"
            )
        if gpu.get("retired_pages_pending"):
            wrong.append("a page retirement is pending a GPU reset")
        pages = gpu.get("retired_pages")
        if pages is not None and rule.threshold > 0 and pages >= rule.threshold:
            wrong.append(f"{pages} retired pages")
        return "; ".join(wrong) or None

    fields = ("row_remap_failed", "row_remap_pending", "retired_pages_pending", "retired_pages")
    return _latest_condition(rule, now, fleet, fields, judge)


def gpu_throttle(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """Clocks held down by heat or the power brake at least half of the last ``threshold`` minutes."""
    verdict = Verdict()
    length = timedelta(minutes=rule.threshold)
    since = now - length
    causes_of = (("thermal_slowdown_percent", "heat"), ("power_brake_percent", "the power brake"))
    reported = fleet.machines(rule, reported=True)
    seen_by_gpu = spans([m.pk for m in reported if m.is_online(now)], since, now, tuple(c for c, _ in causes_of))
    nothing = Span(0, None, None, None)
    for m in reported:
        online = m.is_online(now)
        for gpu in fleet.gpu_rows(m):
            key = f"machine:{m.pk}:gpu:{gpu['index']}"
            if not online:
                verdict.unknown.add(key)
                continue
            causes = []
            judged = False
            for column, cause in causes_of:
                seen = seen_by_gpu.get((m.pk, gpu["index"]), {}).get(column, nothing)
                if not seen.covers(since, length):
                    continue
                judged = True
                if seen.mean is not None and seen.mean >= SUSTAINED_THROTTLE_PERCENT:
                    causes.append(f"{cause} {seen.mean:.0f} % of the time")
            if not judged:
                verdict.unknown.add(key)
            elif causes:
                held = " and ".join(causes)
                message = f"{m.name} GPU {gpu['index']}: clocks held down by {held} over {rule.threshold:g} min"
                verdict.firing.append(Finding(key, message, m.pk, gpu["index"]))
    return verdict


# How far a listed GPU's last_listed_at may lag the last run that listed it: writing it on every
# run was an UPDATE of every GPU of the fleet each 30 s (23,000 rows at 3,000 machines; 80,000 at
# 10,000, more rows a second than ingest's own at that size's 1/3).
LISTED_RESOLUTION = timedelta(minutes=5)


@dataclass(slots=True)
class _Known:
    """A KnownGpu as gpu_missing reads and changes it (pk None: first seen in this run)."""

    pk: int | None
    name: str
    index: int | None
    missing_since: datetime | None


def gpu_missing(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """A GPU the machine listed before that NVML no longer lists, or reports lost, for ``threshold`` minutes.

    Every physical GPU a machine reports is remembered (``KnownGpu``); one removed on purpose is
    forgotten by deleting it in the admin."""
    verdict = Verdict()
    wait = timedelta(minutes=rule.threshold)
    seen = fleet.machines(rule, seen=True)
    # Read as rows and written in bulk: per machine and GPU this was a query and an UPDATE every
    # 30 s, and then 24,000 model instances a run at 3,000 machines (0.4 s, bench/alerts.py).
    known_by_machine: dict[int, dict[str, _Known]] = {}
    rows = KnownGpu.objects.filter(machine_id__in=[m.pk for m in seen]).values_list(
        "machine_id", "uuid", "pk", "name", "index", "missing_since"
    )
    for machine_id, uuid, *fields in rows:
        known_by_machine.setdefault(machine_id, {})[uuid] = _Known(*fields)
    online_ids: list[int] = []  # their GPUs not in `gone` are listed now (marked per LISTED_RESOLUTION)
    gone: list[int] = []  # not listed (or lost) on an online machine
    back: list[int] = []  # listed again after they went missing
    newly_missing: list[int] = []  # of those, the ones missing since now
    moved: list[KnownGpu] = []  # listed at another index than remembered
    new: list[KnownGpu] = []
    for m in seen:
        known = known_by_machine.get(m.pk, {})
        online = m.is_online(now)
        listed: set[str] = set()
        first_seen: dict[str, _Known] = {}
        for gpu in fleet.gpu_rows(m):
            uuid = gpu.get("uuid")
            if not uuid or gpu.get("vendor") != "nvidia":
                continue
            lost = gpu.get("nvml_last_error") == GPU_IS_LOST
            if not lost:
                listed.add(uuid)
            entry = known.get(uuid)
            if entry is None:
                entry = known[uuid] = first_seen[uuid] = _Known(None, gpu.get("name") or "", gpu["index"], None)
            if not lost and online:
                if entry.index != gpu["index"]:
                    entry.index = gpu["index"]
                    if entry.pk is not None:
                        moved.append(KnownGpu(pk=entry.pk, index=entry.index))
                if entry.missing_since is not None and entry.pk is not None:
                    back.append(entry.pk)
                entry.missing_since = None
        if online:
            online_ids.append(m.pk)
        for uuid, entry in known.items():
            key = f"machine:{m.pk}:gpu:{uuid}"
            if not online:
                verdict.unknown.add(key)
                continue
            if uuid in listed:
                continue
            if entry.pk is not None:
                gone.append(entry.pk)
            if entry.missing_since is None:
                entry.missing_since = now
                if entry.pk is not None:
                    newly_missing.append(entry.pk)
            if now - entry.missing_since >= wait:
                # From the first run that missed it: the last that listed it was one beat before.
                absent = f"{(now - entry.missing_since).total_seconds() / 60:.0f} min"
                verdict.firing.append(
                    Finding(
                        key,
                        f"{m.name}: {entry.name or 'a GPU'} ({uuid}, last at index {entry.index}) is no longer listed "
                        f"by NVML or is lost, for {absent}",
                        m.pk,
                        entry.index,
                    )
                )
        new.extend(
            KnownGpu(
                machine_id=m.pk, uuid=u, name=e.name, index=e.index, last_listed_at=now, missing_since=e.missing_since
            )
            for u, e in first_seen.items()
        )
    # By machine, not by GPU: a list of ~6,000 row ids at 750 machines took 0.2 s to convert. The
    # chunks keep under SQLite's cap on one statement's parameters.
    listed_before = now - LISTED_RESOLUTION
    for start in range(0, len(online_ids), 5000):
        KnownGpu.objects.filter(
            machine_id__in=online_ids[start : start + 5000], last_listed_at__lte=listed_before
        ).exclude(pk__in=gone).update(last_listed_at=now)
    for start in range(0, len(back), 5000):
        KnownGpu.objects.filter(pk__in=back[start : start + 5000]).update(last_listed_at=now, missing_since=None)
    for start in range(0, len(newly_missing), 5000):
        KnownGpu.objects.filter(pk__in=newly_missing[start : start + 5000]).update(missing_since=now)
    KnownGpu.objects.bulk_update(moved, ["index"], batch_size=500)
    # After the update above, which would take a GPU first seen lost for a listed one. Another
    # evaluation that got there first (two runs overlapping) keeps its row.
    KnownGpu.objects.bulk_create(new, batch_size=1000, ignore_conflicts=True)
    return verdict
