"""Alert evaluation: what each enabled rule sees now, and the incidents that opens and closes.

``evaluate(now)`` runs every 30 s (``tasks.evaluate``). Each rule kind is one function returning a
``Verdict``: the things it finds wrong now (``firing``, one key per incident) and the things it
cannot judge now (``unknown``: no fresh data). An alert opens for a firing key that has no open
alert (so it fires once per incident, however often we evaluate), and resolves when its key is
neither firing nor unknown: a machine that went offline keeps its GPU-temperature alert open rather
than having it resolve on stale data, while the offline rule speaks for it.

Job failures are events, not conditions: one alert per failed or lost job (never again for the same
job), which stays open ``threshold`` minutes so the dashboard shows it, then expires without a
"resolved" webhook, since nothing was fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from dashboard.jobs.models import Job

from . import ghosts, health, idle, webhooks
from .findings import Finding, Fleet, Verdict, span
from .findings import machines as _machines
from .models import Alert, AlertRule, SpoolWatch, WebhookDelivery

log = logging.getLogger(__name__)

IDLE_UTIL_PERCENT = 5.0  # a GPU whose window means all stay under this is idle


def machine_offline(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """Machines silent for at least ``threshold`` minutes (a machine that never reported is not offline)."""
    verdict = Verdict()
    limit = now - timedelta(minutes=rule.threshold)
    for m in _machines(rule).filter(state__last_seen_at__lte=limit).only("pk", "name", "state__last_seen_at"):
        silent = (now - m.last_seen_at).total_seconds() / 60
        verdict.firing.append(
            Finding(
                f"machine:{m.pk}",
                f"{m.name} has sent nothing for {silent:.0f} min (last seen {m.last_seen_at:%Y-%m-%d %H:%M} UTC)",
                m.pk,
            )
        )
    return verdict


def gpu_temperature(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """GPUs whose latest window's mean temperature is above ``threshold`` °C, on online machines."""
    verdict = Verdict()
    for m in fleet.machines(rule, reported=True):
        online = m.is_online(now)
        for gpu in (m.latest or {}).get("gpus") or []:
            key = f"machine:{m.pk}:gpu:{gpu['index']}"
            temp = gpu.get("temp_c")
            if not online or temp is None:
                verdict.unknown.add(key)
            elif temp > rule.threshold:
                verdict.firing.append(
                    Finding(
                        key,
                        f"{m.name} GPU {gpu['index']} is at {temp:.0f} °C (over {rule.threshold:g} °C)",
                        m.pk,
                        gpu["index"],
                    )
                )
    return verdict


def gpu_idle_with_job(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """GPUs a running job holds whose utilisation stayed under 5 % for the last ``threshold`` minutes.

    Read from the raw windows: every window mean in the span under ``IDLE_UTIL_PERCENT``, the windows
    covering the span, and the job running since before it started. Without telemetry (offline, a MIG
    device with no utilisation) the GPU is unknown, not idle.
    """
    verdict = Verdict()
    length = timedelta(minutes=rule.threshold)
    since = now - length
    jobs = Job.objects.filter(status=Job.Status.RUNNING, started_at__lte=since, machine__isnull=False).select_related(
        "machine"
    )
    if rule.machine_id:
        jobs = jobs.filter(machine_id=rule.machine_id)
    for job in jobs:
        for gpu in job.assigned_gpus or []:
            key = f"job:{job.pk}:gpu:{gpu}"
            seen = span(job.machine_id, gpu, since, now, "util_percent")
            if seen.windows and seen.top is not None and seen.top >= IDLE_UTIL_PERCENT:
                continue  # busy at some point: not idle
            if not seen.covers(since, length):
                verdict.unknown.add(key)  # no data, or not for the whole span
                continue
            verdict.firing.append(
                Finding(
                    key,
                    f"{job.machine.name} GPU {gpu} has been idle (under {IDLE_UTIL_PERCENT:g} %) "
                    f"for {rule.threshold:g} min while job #{job.pk} {job.name} holds it",
                    job.machine_id,
                    gpu,
                    job.pk,
                )
            )
    return verdict


def job_failed(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """Jobs that ended failed or lost since the rule was created and have no alert of this rule yet."""
    verdict = Verdict()
    jobs = (
        Job.objects.filter(
            status__in=(Job.Status.FAILED, Job.Status.LOST), finished_at__gte=rule.created_at, finished_at__lte=now
        )
        .exclude(pk__in=Alert.objects.filter(rule=rule, job__isnull=False).values("job_id"))
        .select_related("machine")
        .order_by("finished_at")
    )
    if rule.machine_id:
        jobs = jobs.filter(machine_id=rule.machine_id)
    for job in jobs:
        where = f" on {job.machine.name}" if job.machine else ""
        why = f": {job.status_message}" if job.status_message else ""
        verdict.firing.append(
            Finding(
                f"job:{job.pk}",
                f"Job #{job.pk} {job.name} {job.status}{where}{why}"[:500],
                job.machine_id,
                job_id=job.pk,
            )
        )
    return verdict


def _grew(count: int, seen: int) -> bool:
    """Whether an agent's loss count shows new losses: it went up, or it went down (a reinstalled
    agent's new spool counts from 0) and is above 0 again."""
    return count > seen or 0 < count < seen


def spool_dropping(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """Machines whose agent lost samples since the last evaluation, until ``threshold`` quiet minutes:
    dropped (its spool was full) or refused (the server called their batch malformed)."""
    verdict = Verdict()
    quiet = timedelta(minutes=rule.threshold)
    watches = {w.machine_id: w for w in SpoolWatch.objects.filter(rule=rule)}
    new: list[SpoolWatch] = []
    changed: list[SpoolWatch] = []
    fields = ("pk", "name", "state__spool_dropped", "state__spool_refused", "state__last_refusal")
    for m in _machines(rule).only(*fields):
        watch = watches.get(m.pk)
        if watch is None:  # first look: what was lost before is history, not news
            new.append(SpoolWatch(rule=rule, machine=m, dropped=m.spool_dropped, refused=m.spool_refused))
            continue
        counts = (m.spool_dropped, m.spool_refused)
        if counts != (watch.dropped, watch.refused):
            if _grew(m.spool_dropped, watch.dropped) or _grew(m.spool_refused, watch.refused):
                watch.increased_at = now
            watch.dropped, watch.refused = counts
            changed.append(watch)
        if watch.increased_at is not None and now - watch.increased_at < quiet:
            lost = []
            if m.spool_dropped:
                lost.append(f"{m.spool_dropped} dropped in all: its spool was full")
            if m.spool_refused:
                why = f" (last: {m.last_refusal})" if m.last_refusal else ""
                lost.append(f"{m.spool_refused} refused by the server in all{why}")
            message = f"{m.name}'s agent is losing samples: {'; '.join(lost)}"
            verdict.firing.append(Finding(f"machine:{m.pk}", message[:500], m.pk))
    # In bulk: on by default, the rule's first run meets every machine of the fleet at once.
    SpoolWatch.objects.bulk_create(new, batch_size=1000)
    SpoolWatch.objects.bulk_update(changed, ["dropped", "refused", "increased_at"], batch_size=500)
    return verdict


# Every check takes the rule, the evaluation's time and the fleet read it shares with the other rules
# (the checks of jobs and of the offline and spool rules read narrower queries of their own).
CHECKS: dict[str, Callable[[AlertRule, datetime, Fleet], Verdict]] = {
    AlertRule.Kind.MACHINE_OFFLINE: machine_offline,
    AlertRule.Kind.GPU_TEMPERATURE: gpu_temperature,
    AlertRule.Kind.GPU_IDLE_WITH_JOB: gpu_idle_with_job,
    AlertRule.Kind.JOB_FAILED: job_failed,
    AlertRule.Kind.SPOOL_DROPPING: spool_dropping,
    AlertRule.Kind.GPU_XID: health.gpu_xid,
    AlertRule.Kind.GPU_ECC_UNCORRECTABLE: health.gpu_ecc_uncorrectable,
    AlertRule.Kind.GPU_MEMORY_REMAP: health.gpu_memory_remap,
    AlertRule.Kind.GPU_THROTTLE: health.gpu_throttle,
    AlertRule.Kind.GPU_MISSING: health.gpu_missing,
    AlertRule.Kind.GPU_NVML_ERRORS: health.gpu_nvml_errors,
    AlertRule.Kind.GHOST_MEMORY: ghosts.ghost_memory,
    AlertRule.Kind.JOB_ALLOCATED_IDLE: idle.job_allocated_idle,
}


def _with_advice(rule: AlertRule, message: str) -> str:
    """The finding and, for the health kinds, the rule's one line of what to do (500 characters at most)."""
    advice = rule.advice if rule.kind in HEALTH_KINDS else ""
    if not advice:
        return message[:500]
    tail = f" — What to do: {advice}"
    return message[: 500 - len(tail)] + tail


# Kinds whose alerts say what to do in their message; the older kinds' messages are unchanged.
HEALTH_KINDS = {
    AlertRule.Kind.GPU_XID,
    AlertRule.Kind.GPU_ECC_UNCORRECTABLE,
    AlertRule.Kind.GPU_MEMORY_REMAP,
    AlertRule.Kind.GPU_THROTTLE,
    AlertRule.Kind.GPU_MISSING,
    AlertRule.Kind.GPU_NVML_ERRORS,
    AlertRule.Kind.GHOST_MEMORY,
    AlertRule.Kind.JOB_ALLOCATED_IDLE,
}


def _notify(alert: Alert, event: str, now: datetime) -> None:
    """Queue a webhook POST for the event if the rule has a URL (``webhooks.deliver_due`` sends it)."""
    url = alert.rule.webhook_url
    if not url:
        return
    WebhookDelivery.objects.create(
        alert=alert, event=event, url=url, payload=webhooks.payload(alert, event), next_try_at=now, created_at=now
    )
    alert.last_notified = event
    alert.save(update_fields=["last_notified"])


def resolve(alert: Alert, now: datetime, why: str, notify: bool = True) -> None:
    alert.resolved_at, alert.resolution = now, why[:200]
    alert.save(update_fields=["resolved_at", "resolution"])
    # Only an incident whose firing was announced gets its resolution announced.
    if notify and alert.last_notified:
        _notify(alert, WebhookDelivery.Event.RESOLVED, now)


def apply(rule: AlertRule, verdict: Verdict, now: datetime) -> tuple[int, int]:
    """Open an alert for each new firing key, resolve the ones that cleared; (fired, resolved)."""
    open_alerts = {a.key: a for a in Alert.objects.filter(rule=rule, resolved_at=None).select_related("rule")}
    fired = resolved = 0
    firing = set()
    for f in verdict.firing:
        firing.add(f.key)
        if f.key in open_alerts or (rule.is_event and Alert.objects.filter(rule=rule, key=f.key).exists()):
            continue
        alert = Alert.objects.create(
            rule=rule,
            key=f.key,
            machine_id=f.machine_id,
            gpu_index=f.gpu_index,
            job_id=f.job_id,
            message=_with_advice(rule, f.message),
            fired_at=now,
        )
        _notify(alert, WebhookDelivery.Event.FIRED, now)
        fired += 1
        if rule.is_event:
            open_alerts[f.key] = alert
    for key, alert in open_alerts.items():
        if rule.is_event:
            if now - alert.fired_at >= timedelta(minutes=rule.threshold):
                resolve(alert, now, "expired", notify=False)
                resolved += 1
        elif key not in firing and key not in verdict.unknown:
            resolve(alert, now, "condition cleared")
            resolved += 1
    return fired, resolved


def evaluate(now: datetime | None = None) -> dict[str, int]:
    """Evaluate every enabled rule and close what disabled rules left open; counts of alerts fired and resolved."""
    now = now or timezone.now()
    fleet = Fleet()  # read by the first rule that needs it, then shared
    fired = resolved = 0
    for rule_id in AlertRule.objects.filter(enabled=True).values_list("pk", flat=True):
        try:
            with transaction.atomic():
                # Locked so that two overlapping runs take turns per rule.
                rule = AlertRule.objects.select_for_update().filter(pk=rule_id, enabled=True).first()
                if rule is None:
                    continue
                f, r = apply(rule, CHECKS[rule.kind](rule, now, fleet), now)
        except Exception:  # one broken rule must not silence the others
            log.exception("alert rule %s could not be evaluated", rule_id)
            continue
        fired, resolved = fired + f, resolved + r
    with transaction.atomic():
        for alert in Alert.objects.filter(resolved_at=None, rule__enabled=False).select_related("rule"):
            resolve(alert, now, "rule disabled")
            resolved += 1
        # A re-enabled rule starts from a fresh baseline, not from drops it did not watch.
        SpoolWatch.objects.filter(rule__enabled=False).delete()
    return {"fired": fired, "resolved": resolved}
