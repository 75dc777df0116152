"""Weekly reports by e-mail or webhook: each team's chargeback and each machine's utilisation report.

The week is the last full Monday-to-Monday week in the team's zone (``Team.time_zone``; a machine
takes its team's, the shared pool the server's ``TIME_ZONE``), as ``dashboard/core/periods.py``
reads a week. A team's reports (its chargeback and one per machine it owns) go to its
``report_emails`` and ``report_webhook``; the shared pool's machines' to ``REPORT_EMAILS`` and
``REPORT_WEBHOOK``.

``plan`` writes one ``ReportDelivery`` per report, channel and week, with the figures as they are
when the week is first seen ended, so a retry sends the same report and a second run sends nothing
new; ``deliver_due`` sends what is due. E-mails are plain text with the report's CSV attached
(Django's mail, ``EMAIL_*`` settings); webhooks are a JSON POST through the alerts app's delivery
(``alerts.webhooks.post``), retried like alert webhooks (``ALERT_WEBHOOK_*``: backoff doubling from
``ALERT_WEBHOOK_BACKOFF_S`` up to an hour, ``ALERT_WEBHOOK_MAX_ATTEMPTS`` tries; a 4xx other than
408/429, or an SMTP 5xx, is not retried).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import smtplib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from dashboard.alerts.webhooks import DeliveryError, post, record_attempt
from dashboard.core.periods import Period, parse_zone, resolve_period
from dashboard.fleet.models import Machine
from dashboard.teams.models import Team

from . import chargeback, report
from .models import ReportDelivery

log = logging.getLogger(__name__)
Kind, Channel = ReportDelivery.Kind, ReportDelivery.Channel


def last_full_week(zone_name: str, now: datetime) -> Period:
    """The last Monday-to-Monday week in ``zone_name`` that has ended by ``now``."""
    day = now.astimezone(parse_zone(zone_name)).date() - timedelta(days=7)
    return resolve_period({"period": "week", "date": day.isoformat(), "tz": zone_name}, now)


def _zone(team: Team | None) -> str:
    return (team.time_zone if team else "") or settings.TIME_ZONE


def _recipients(team: Team | None) -> dict[str, str]:
    """Channel -> target: the team's addresses and webhook, or the shared pool's from the settings."""
    emails = re.split(r"[,\s]+", team.report_emails) if team else list(settings.REPORT_EMAILS)
    webhook = team.report_webhook if team else settings.REPORT_WEBHOOK
    out = {}
    if any(e for e in emails):
        out[Channel.EMAIL.value] = ",".join(e for e in emails if e)
    if webhook:
        out[Channel.WEBHOOK.value] = webhook
    return out


def _plain(value: Any) -> Any:
    """JSON types only (a stored payload is sent as is)."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _csv_text(rows: list[list[Any]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def _num(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "unknown"
    text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return f"{text} {unit}".rstrip()


def _when(period: Period) -> dict[str, str]:
    return {
        "from": period.start.astimezone(period.zone).isoformat(),
        "to": period.end.astimezone(period.zone).isoformat(),
        "time_zone": period.zone_name,
        "title": period.title,
    }


def team_report(team: Team, period: Period) -> dict[str, Any]:
    """The e-mail and webhook contents of a team's chargeback for ``period``."""
    rows = chargeback.team_chargeback(period.start, period.end, [team])
    row = rows[0]
    money = (lambda v: _num(v, 2, row["currency"] or "")) if row["currency"] not in (None, "mixed") else None
    headline = f"Team {team.name}: {period.title} ({period.zone_name})"
    lines = [
        headline,
        "",
        f"Allocated GPU-hours: {_num(row['allocated_gpu_hours'])}",
        f"Used GPU-hours: {_num(row['used_gpu_hours'])} "
        f"({_num(row['used_percent_of_allocated'], 1, '%')} of allocated; "
        f"SM activity {_num(row['sm_weighted_gpu_hours'])}, NVML utilisation {_num(row['util_weighted_gpu_hours'])})",
        f"GPU energy: {_num(row['energy_kwh'], 3, 'kWh')}",
        f"Tokens: {_num(row['prompt_tokens'])} prompt, {_num(row['generated_tokens'])} generated, "
        f"{_num(row['train_tokens'])} training",
        f"Cost: {money(row['cost']) if money else 'not summed (' + (row['currency'] or 'no cost profile') + ')'}",
        f"Value: {money(row['value']) if money else 'not summed'}",
        f"Jobs: {row['jobs']} ({row['attempts']} attempts)",
        "",
        "The attached CSV has the same figures (dashboard: Reports → Teams).",
    ]
    day = period.start.astimezone(period.zone).date().isoformat()
    return {
        Channel.EMAIL.value: {
            "subject": f"[hwdash] Weekly report: team {team.name}, {period.title}",
            "body": "\n".join(lines) + "\n",
            "filename": f"team-{team.slug}-week-{day}.csv",
            "csv": _csv_text(chargeback.csv_rows(rows)),
        },
        Channel.WEBHOOK.value: _plain(
            {
                "event": "weekly_report",
                "kind": Kind.TEAM.value,
                "team": team.slug,
                "text": f"{headline}: {_num(row['allocated_gpu_hours'])} GPU-hours allocated, "
                f"{_num(row['used_gpu_hours'])} used",
                "period": _when(period),
                "figures": row,
            }
        ),
    }


def machine_report(machine: Machine, period: Period) -> dict[str, Any]:
    """The e-mail and webhook contents of a machine's utilisation report for ``period`` (and the week before)."""
    figures = report.machine_report(
        machine, period.start, period.end, previous_start=period.previous_start, previous_end=period.previous_end
    )
    headline = f"Machine {machine.name}: {period.title} ({period.zone_name})"
    lines = [headline, "", "Device: mean utilisation, busy hours, energy (this week / the week before)"]
    for row in figures["rows"]:
        now, before = row["now"], row["before"]
        lines.append(
            f"{now['name']}: {_num(now['mean_util_percent'], 1, '%')} / {_num(before['mean_util_percent'], 1, '%')}, "
            f"{_num(now['busy_hours'])} / {_num(before['busy_hours'])} h, "
            f"{_num(now['energy_kwh'], 3)} / {_num(before['energy_kwh'], 3)} kWh"
        )
    lines.append("")
    currency = figures["currency"] or ""
    for s in figures["summary"]:
        unit = currency if s["kind"] == "money" else ""
        lines.append(f"{s['label']}: {_num(s['now'], 2, unit)} / {_num(s['before'], 2, unit)}")
    lines += ["", "The attached CSV has every figure, with units in its headers."]
    day = period.start.astimezone(period.zone).date().isoformat()
    devices = [
        {"name": row["now"]["name"], **{k: row["now"].get(k) for k in report.FIGURES}} for row in figures["rows"]
    ]
    return {
        Channel.EMAIL.value: {
            "subject": f"[hwdash] Weekly report: machine {machine.name}, {period.title}",
            "body": "\n".join(lines) + "\n",
            "filename": f"{machine.name}-week-{day}.csv",
            "csv": _csv_text(report.machine_report_csv(figures, period.zone)),
        },
        Channel.WEBHOOK.value: _plain(
            {
                "event": "weekly_report",
                "kind": Kind.MACHINE.value,
                "machine": machine.name,
                "text": headline,
                "period": _when(period),
                "currency": figures["currency"],
                "devices": devices,
                "summary": [{k: s[k] for k in ("label", "now", "before")} for s in figures["summary"]],
            }
        ),
    }


def _plan_one(
    kind: str,
    subject: str,
    recipients: dict[str, str],
    period: Period,
    build: Callable[[Period], dict[str, Any]],
    now: datetime,
) -> int:
    done = set(
        ReportDelivery.objects.filter(kind=kind, subject=subject, period_start=period.start).values_list(
            "channel", flat=True
        )
    )
    missing = [c for c in recipients if c not in done]
    if not missing:
        return 0
    contents = build(period)
    created = 0
    for channel in missing:
        _, new = ReportDelivery.objects.get_or_create(
            kind=kind,
            subject=subject,
            period_start=period.start,
            channel=channel,
            defaults={
                "period_end": period.end,
                "target": recipients[channel],
                "payload": contents[channel],
                "created_at": now,
                "next_try_at": now,
            },
        )
        created += new
    return created


def plan(now: datetime | None = None) -> int:
    """Write the deliveries of every report whose week has ended and that has somewhere to go; how many."""
    now = now or timezone.now()
    created = 0
    for team in Team.objects.exclude(report_emails="", report_webhook=""):
        period = last_full_week(_zone(team), now)
        if team.created_at < period.end:
            created += _plan_one(
                Kind.TEAM, team.slug, _recipients(team), period, lambda p, t=team: team_report(t, p), now
            )
    for machine in Machine.objects.select_related("team").prefetch_related("accelerators"):
        recipients = _recipients(machine.team)
        period = last_full_week(_zone(machine.team), now)
        if recipients and machine.created_at < period.end:
            created += _plan_one(
                Kind.MACHINE, machine.name, recipients, period, lambda p, m=machine: machine_report(m, p), now
            )
    return created


def _send(delivery: ReportDelivery) -> None:
    """Send once; ``DeliveryError`` says what failed and whether another try may help."""
    if delivery.channel == Channel.WEBHOOK:
        post(delivery.target, delivery.payload, settings.ALERT_WEBHOOK_TIMEOUT_S)
        return
    if not settings.EMAIL_HOST and settings.EMAIL_BACKEND == "django.core.mail.backends.smtp.EmailBackend":
        raise DeliveryError("EMAIL_HOST is not set", retry=False)
    content = delivery.payload
    message = EmailMessage(content["subject"], content["body"], to=delivery.target.split(","))
    message.attach(content["filename"], content["csv"], "text/csv")
    try:
        message.send()
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"SMTP refused every recipient: {exc.recipients}", retry=False) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"SMTP {exc.smtp_code} {exc.smtp_error!r}", retry=exc.smtp_code < 500) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"SMTP: {type(exc).__name__}: {exc}") from None


def attempt(delivery: ReportDelivery, now: datetime) -> bool:
    """Try one delivery once and record the outcome (as alert webhooks are retried); True if it went out."""
    return record_attempt(delivery, now, lambda: _send(delivery), f"weekly report {delivery}")


def deliver_due(now: datetime | None = None, budget_s: float = 120.0) -> int:
    """Send the deliveries that are due, oldest first, for about ``budget_s`` seconds; how many went out."""
    now = now or timezone.now()
    started = time.monotonic()
    pending = ReportDelivery.objects.filter(delivered_at=None, gave_up_at=None)
    delivered = 0
    for delivery in pending.filter(next_try_at__lte=now).order_by("next_try_at", "pk")[:100]:
        if time.monotonic() - started > budget_s:
            break
        # Claim it by moving its next try past our own timeout: an overlapping run skips it.
        lease = now + timedelta(seconds=max(settings.ALERT_WEBHOOK_TIMEOUT_S, settings.EMAIL_TIMEOUT) + 30)
        if not pending.filter(pk=delivery.pk, next_try_at=delivery.next_try_at).update(next_try_at=lease):
            continue
        delivered += attempt(delivery, now)
    return delivered


def run(now: datetime | None = None) -> dict[str, int]:
    """What the beat task does: plan the weeks that ended, then send what is due."""
    now = now or timezone.now()
    return {"planned": plan(now), "delivered": deliver_due(now)}
