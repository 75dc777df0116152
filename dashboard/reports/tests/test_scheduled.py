"""Weekly reports: each team's chargeback and each machine's utilisation report for the last full
week in the team's zone, by e-mail to a real SMTP server (aiosmtpd, started here) with the CSV
attached, and by webhook to a local HTTP server, each once, a failed one retried."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from dashboard.fleet.models import Machine
from dashboard.jobs.models import Job, JobAttempt
from dashboard.jobs.tests.conftest import owner, team_a  # noqa: F401
from dashboard.reports import scheduled, tasks
from dashboard.reports.models import ReportDelivery
from dashboard.teams.models import Team

pytestmark = pytest.mark.django_db

ADELAIDE = "Australia/Adelaide"  # +10:30 in November: a week boundary far from UTC's
NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # a Wednesday
# The last full week in Adelaide: Monday 16 November 00:00 to Monday 23 November 00:00 (+10:30).
WEEK_START = datetime(2026, 11, 15, 13, 30, tzinfo=UTC)
WEEK_END = datetime(2026, 11, 22, 13, 30, tzinfo=UTC)
LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted"


@pytest.fixture
def smtp(settings):
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=_free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.DEFAULT_FROM_EMAIL = "hwdash@example.org"
    yield sink
    controller.stop()


@pytest.fixture
def hook(settings):
    """A local HTTP server: answers the statuses in ``hook.statuses`` in turn (then 200), keeps the bodies."""
    bodies: list[dict] = []
    statuses: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's hook name
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_port}/hook"
    server.bodies, server.statuses = bodies, statuses
    settings.ALERT_WEBHOOK_BACKOFF_S = 30
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def week(owner, team_a, settings, hook):  # noqa: F811
    settings.TIME_ZONE = "UTC"
    settings.REPORT_EMAILS = ["fleet@example.org"]
    team_a.time_zone = ADELAIDE
    team_a.report_emails = "lead@example.org, ops@example.org"
    team_a.report_webhook = hook.url
    team_a.save()
    Team.objects.update(created_at=LONG_AGO)
    box = Machine.objects.create(name="box", team=team_a, created_at=LONG_AGO)
    Machine.objects.create(name="pool-1", created_at=LONG_AGO)  # the shared pool
    Machine.objects.create(name="new-1", team=team_a)  # enrolled after the week: no report
    job = Job.objects.create(owner=owner, team=team_a, name="t", kind="train", argv=["x"], status="succeeded")
    t = datetime(2026, 11, 18, 8, 0, tzinfo=UTC)
    JobAttempt.objects.create(
        job=job, number=1, machine=box, gpus=[0, 1], started_at=t, ended_at=t + timedelta(hours=2)
    )
    # Across the week's end in Adelaide: one of its two hours is in the week.
    t = WEEK_END - timedelta(hours=1)
    JobAttempt.objects.create(job=job, number=2, machine=box, gpus=[0], started_at=t, ended_at=t + timedelta(hours=2))
    return team_a


def attachment(message) -> tuple[str, list[dict[str, str]]]:
    part = next(p for p in message.walk() if p.get_filename())
    return part.get_filename(), list(csv.DictReader(io.StringIO(part.get_payload(decode=True).decode())))


def test_the_last_full_week_is_monday_to_monday_in_the_zone():
    period = scheduled.last_full_week(ADELAIDE, NOW)
    assert (period.start, period.end) == (WEEK_START, WEEK_END) and not period.partial
    # Half an hour into Monday in Adelaide (still Sunday in UTC) the week just ended is the last full one.
    monday = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)
    assert scheduled.last_full_week(ADELAIDE, monday).start == WEEK_START
    assert scheduled.last_full_week("UTC", monday).end == datetime(2026, 11, 16, tzinfo=UTC)


def test_each_team_and_machine_report_is_mailed_once_with_its_csv(week, smtp, hook):
    assert scheduled.run(NOW) == {"planned": 5, "delivered": 5}  # team and box by both channels, pool-1 by mail
    assert scheduled.run(NOW + timedelta(hours=1)) == {"planned": 0, "delivered": 0}
    assert len(smtp.messages) == 3

    by_subject = {m["Subject"]: (m, rcpt) for m, rcpt in zip(smtp.messages, smtp.recipients, strict=True)}
    team_mail, rcpt = by_subject["[hwdash] Weekly report: team Team A, Week of Monday 16 November 2026"]
    assert sorted(rcpt) == ["lead@example.org", "ops@example.org"]
    assert team_mail["From"] == "hwdash@example.org"
    body = next(p for p in team_mail.walk() if p.get_content_type() == "text/plain" and not p.get_filename())
    assert "Allocated GPU-hours: 5.00" in body.get_payload(decode=True).decode()
    name, rows = attachment(team_mail)
    assert name == "team-team-a-week-2026-11-16.csv"
    assert [(r["team"], float(r["allocated_gpu_hours"]), int(r["attempts"])) for r in rows] == [("team-a", 5.0, 2)]

    box_mail, rcpt = by_subject["[hwdash] Weekly report: machine box, Week of Monday 16 November 2026"]
    assert sorted(rcpt) == ["lead@example.org", "ops@example.org"]
    name, rows = attachment(box_mail)
    assert name == "box-week-2026-11-16.csv"
    current = next(r for r in rows if r["period"] == "current" and r["scope"] == "machine")
    assert (current["from"], current["to"]) == ("2026-11-16T00:00:00+10:30", "2026-11-23T00:00:00+10:30")
    assert current["attempts"] == "2"

    pool_mail, rcpt = by_subject["[hwdash] Weekly report: machine pool-1, Week of Monday 16 November 2026"]
    assert rcpt == ["fleet@example.org"]
    _, rows = attachment(pool_mail)  # the shared pool's week is in the server's zone (UTC)
    assert rows[0]["from"] == "2026-11-16T00:00:00+00:00"

    team_hook = next(b for b in hook.bodies if b["kind"] == "team")
    assert team_hook["event"] == "weekly_report" and team_hook["team"] == "team-a"
    assert team_hook["figures"]["allocated_gpu_hours"] == 5.0
    assert team_hook["period"]["from"] == "2026-11-16T00:00:00+10:30"
    machine_hook = next(b for b in hook.bodies if b["kind"] == "machine")
    assert machine_hook["machine"] == "box" and machine_hook["period"]["time_zone"] == ADELAIDE


def test_a_failed_webhook_is_retried_after_the_backoff_with_the_same_report(week, hook, settings):
    settings.REPORT_EMAILS = []
    Team.objects.filter(pk=week.pk).update(report_emails="")
    hook.statuses[:] = [503, 503]
    assert scheduled.run(NOW) == {"planned": 2, "delivered": 0}
    retried = ReportDelivery.objects.get(kind="team")
    assert retried.attempts == 1 and retried.last_error == "HTTP 503 Service Unavailable"
    assert retried.next_try_at == NOW + timedelta(seconds=30)
    assert scheduled.deliver_due(NOW + timedelta(seconds=29)) == 0  # not yet due
    assert scheduled.deliver_due(NOW + timedelta(seconds=30)) == 2
    assert len(hook.bodies) == 4 and hook.bodies[0] == hook.bodies[2]
    assert ReportDelivery.objects.filter(delivered_at__isnull=False).count() == 2


def test_a_refused_webhook_and_a_missing_mail_server_are_given_up_at_once(week, hook, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = ""
    hook.statuses[:] = [404, 404]
    assert scheduled.run(NOW)["delivered"] == 0
    errors = dict(ReportDelivery.objects.values_list("channel", "last_error").distinct())
    assert errors == {"email": "EMAIL_HOST is not set", "webhook": "HTTP 404 Not Found"}
    assert not ReportDelivery.objects.filter(gave_up_at=None).exists()


def test_the_beat_task_plans_and_sends(week, smtp, settings):
    settings.REPORT_EMAILS = []
    Team.objects.filter(pk=week.pk).update(report_webhook="")
    assert settings.CELERY_BEAT_SCHEDULE["weekly-reports"]["task"] == tasks.weekly_reports.name
    result = tasks.weekly_reports()  # the last full week before today: nothing ran in it, still reported
    assert result == {"planned": 2, "delivered": 2} and len(smtp.messages) == 2
