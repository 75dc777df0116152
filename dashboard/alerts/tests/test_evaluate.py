"""Each rule kind fires once per incident across repeated evaluations and resolves when it clears.

Times are set by hand: ``evaluate(now)`` takes the moment it judges, so no test sleeps.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from dashboard.alerts import tasks
from dashboard.alerts.evaluate import evaluate
from dashboard.alerts.models import Alert, AlertRule, SpoolWatch, WebhookDelivery
from dashboard.fleet.models import GpuSample, Machine, MachineState
from dashboard.jobs.models import Job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("own_rules_only")]


@pytest.fixture
def t0() -> datetime:
    return timezone.now().replace(microsecond=0)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def a_rule(kind: str, threshold: float, created_at: datetime, **kw) -> AlertRule:
    return AlertRule.objects.create(name=f"{kind} rule", kind=kind, threshold=threshold, created_at=created_at, **kw)


def open_alerts(rule: AlertRule) -> list[Alert]:
    return list(Alert.objects.filter(rule=rule, resolved_at=None))


def seen(machine: Machine, at: datetime, temps: list[float | None] | None = None) -> None:
    """The machine reported at ``at``; its newest window had these GPU temperatures."""
    machine.last_seen_at = at
    if temps is not None:
        machine.latest = {
            "seq": 1,
            "ts": at.timestamp(),
            "system": {},
            "gpus": [{"index": i, "uuid": f"GPU-{i}", "temp_c": t} for i, t in enumerate(temps)],
        }
    machine.save()


def test_machine_offline_fires_once_and_resolves_when_the_machine_is_back(machine, t0):
    rule = a_rule("machine_offline", 5, t0)
    seen(machine, t0)
    Machine.objects.create(name="never-reported")  # enrolled, never sent anything: not an incident

    assert evaluate(t0 + minutes(4)) == {"fired": 0, "resolved": 0}
    assert evaluate(t0 + minutes(5)) == {"fired": 1, "resolved": 0}
    for later in (6, 7, 30):
        assert evaluate(t0 + minutes(later))["fired"] == 0
    [alert] = Alert.objects.filter(rule=rule)
    assert alert.key == f"machine:{machine.pk}" and alert.machine == machine and alert.resolved_at is None
    assert "gpu-01 has sent nothing for 5 min" in alert.message

    seen(machine, t0 + minutes(31))
    assert evaluate(t0 + minutes(31)) == {"fired": 0, "resolved": 1}
    alert.refresh_from_db()
    assert alert.resolved_at == t0 + minutes(31) and alert.resolution == "condition cleared"
    assert evaluate(t0 + minutes(32)) == {"fired": 0, "resolved": 0}

    # Silent again: a new incident.
    assert evaluate(t0 + minutes(36))["fired"] == 1
    assert Alert.objects.filter(rule=rule).count() == 2 and len(open_alerts(rule)) == 1


def test_gpu_temperature_fires_per_gpu_and_resolves_when_it_cools(machine, t0):
    rule = a_rule("gpu_temperature", 85, t0)
    seen(machine, t0, [60, 91, None])

    assert evaluate(t0)["fired"] == 1
    assert evaluate(t0 + minutes(1))["fired"] == 0
    [alert] = open_alerts(rule)
    assert (alert.key, alert.gpu_index) == (f"machine:{machine.pk}:gpu:1", 1)
    assert alert.message == "gpu-01 GPU 1 is at 91 °C (over 85 °C)"

    # The machine goes silent: its last temperature is stale, so the alert neither resolves nor fires again.
    assert evaluate(t0 + minutes(10)) == {"fired": 0, "resolved": 0}
    assert len(open_alerts(rule)) == 1

    seen(machine, t0 + minutes(11), [60, 84, None])
    assert evaluate(t0 + minutes(11)) == {"fired": 0, "resolved": 1}
    assert open_alerts(rule) == []


def gpu_windows(machine: Machine, gpu: int, util: float, start: datetime, end: datetime, seq0: int = 0) -> None:
    rows, ts, seq = [], start, seq0
    while ts <= end:
        seq += 1
        rows.append(
            GpuSample(
                machine=machine,
                seq=seq,
                gpu_index=gpu,
                ts=ts,
                interval_s=10,
                count=10,
                util_percent_min=util,
                util_percent_mean=util,
                util_percent_max=util,
            )
        )
        ts += timedelta(seconds=10)
    GpuSample.objects.bulk_create(rows)


def a_running_job(owner, machine: Machine, gpus: list[int], started_at: datetime) -> Job:
    return Job.objects.create(
        name="train-demo",
        kind="train",
        owner=owner,
        status=Job.Status.RUNNING,
        machine=machine,
        assigned_gpus=gpus,
        gpus=len(gpus),
        started_at=started_at,
    )


def test_gpu_idle_with_a_running_job_fires_once_and_resolves_when_the_gpu_works(machine, operator, t0):
    rule = a_rule("gpu_idle_with_job", 10, t0)
    job = a_running_job(operator, machine, [0, 1, 2], t0 - minutes(30))
    gpu_windows(machine, 0, 1.0, t0 - minutes(30), t0, seq0=0)  # idle
    gpu_windows(machine, 1, 80.0, t0 - minutes(30), t0, seq0=0)  # busy
    # GPU 2 sends nothing (a MIG slice without utilisation, say): unknown, not idle.

    assert evaluate(t0) == {"fired": 1, "resolved": 0}
    assert evaluate(t0 + timedelta(seconds=30))["fired"] == 0
    [alert] = open_alerts(rule)
    assert (alert.key, alert.gpu_index, alert.job, alert.machine) == (f"job:{job.pk}:gpu:0", 0, job, machine)
    assert f"while job #{job.pk} train-demo holds it" in alert.message

    gpu_windows(machine, 0, 60.0, t0 + minutes(1), t0 + minutes(1), seq0=10_000)  # it starts working
    # Periods are [start, end) (core.periods): a window stamped at the judging instant counts from the next one.
    assert evaluate(t0 + minutes(1) + timedelta(seconds=1)) == {"fired": 0, "resolved": 1}


def test_gpu_idle_needs_the_job_and_the_telemetry_to_span_the_whole_time(machine, operator, t0):
    rule = a_rule("gpu_idle_with_job", 10, t0)
    job = a_running_job(operator, machine, [0], t0 - minutes(5))  # started 5 min ago
    gpu_windows(machine, 0, 0.0, t0 - minutes(30), t0)
    assert evaluate(t0)["fired"] == 0

    job.started_at = t0 - minutes(30)
    job.save()
    GpuSample.objects.filter(ts__lt=t0 - minutes(3)).delete()  # only the last 3 minutes reported
    assert evaluate(t0)["fired"] == 0
    assert open_alerts(rule) == []


def test_gpu_idle_resolves_when_the_job_ends(machine, operator, t0):
    rule = a_rule("gpu_idle_with_job", 10, t0)
    job = a_running_job(operator, machine, [0], t0 - minutes(20))
    gpu_windows(machine, 0, 0.0, t0 - minutes(20), t0)
    assert evaluate(t0)["fired"] == 1
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, finished_at=t0)
    assert evaluate(t0 + minutes(1))["resolved"] == 1
    assert open_alerts(rule) == []


def a_finished_job(owner, machine, status: str, finished_at: datetime, message: str = "") -> Job:
    return Job.objects.create(
        name="train-demo",
        kind="train",
        owner=owner,
        status=status,
        machine=machine,
        finished_at=finished_at,
        status_message=message,
    )


def test_a_failed_or_lost_job_fires_once_and_expires_after_the_threshold(machine, operator, t0):
    a_finished_job(operator, machine, Job.Status.FAILED, t0 - minutes(1))  # before the rule: not news
    rule = a_rule("job_failed", 30, t0, webhook_url="http://127.0.0.1:9/hook")
    failed = a_finished_job(operator, machine, Job.Status.FAILED, t0 + minutes(1), "exit code 1")
    lost = a_finished_job(operator, machine, Job.Status.LOST, t0 + minutes(2), "no heartbeat")
    a_finished_job(operator, machine, Job.Status.SUCCEEDED, t0 + minutes(2))

    assert evaluate(t0 + minutes(3)) == {"fired": 2, "resolved": 0}
    assert {a.job for a in open_alerts(rule)} == {failed, lost}
    assert Alert.objects.get(job=failed).message == f"Job #{failed.pk} train-demo failed on gpu-01: exit code 1"
    assert evaluate(t0 + minutes(20)) == {"fired": 0, "resolved": 0}

    assert evaluate(t0 + minutes(33)) == {"fired": 0, "resolved": 2}
    assert {a.resolution for a in Alert.objects.filter(rule=rule)} == {"expired"}
    # The job is still failed, yet it never fires again; an expiry sends no "resolved" webhook.
    assert evaluate(t0 + minutes(40)) == {"fired": 0, "resolved": 0}
    assert Alert.objects.filter(rule=rule).count() == 2
    assert set(WebhookDelivery.objects.values_list("event", flat=True)) == {"fired"}


def test_a_job_failed_rule_with_threshold_zero_closes_its_alert_at_once(machine, operator, t0):
    rule = a_rule("job_failed", 0, t0)
    a_finished_job(operator, machine, Job.Status.FAILED, t0 + minutes(1))
    assert evaluate(t0 + minutes(2)) == {"fired": 1, "resolved": 1}
    assert evaluate(t0 + minutes(3)) == {"fired": 0, "resolved": 0}
    assert Alert.objects.filter(rule=rule).count() == 1


def test_spool_dropping_fires_when_the_count_grows_and_resolves_after_quiet_minutes(machine, t0):
    rule = a_rule("spool_dropping", 10, t0)
    # dropped before we watched: history
    MachineState.objects.update_or_create(machine_id=machine.pk, defaults={"spool_dropped": 100})

    assert evaluate(t0)["fired"] == 0
    assert SpoolWatch.objects.get(rule=rule, machine=machine).dropped == 100

    MachineState.objects.update_or_create(machine_id=machine.pk, defaults={"spool_dropped": 150})
    assert evaluate(t0 + minutes(1)) == {"fired": 1, "resolved": 0}
    assert "150 dropped in all" in open_alerts(rule)[0].message
    # still dropping: the same incident
    MachineState.objects.update_or_create(machine_id=machine.pk, defaults={"spool_dropped": 160})
    assert evaluate(t0 + minutes(2)) == {"fired": 0, "resolved": 0}
    assert evaluate(t0 + minutes(11)) == {"fired": 0, "resolved": 0}  # 9 quiet minutes
    assert evaluate(t0 + minutes(12)) == {"fired": 0, "resolved": 1}

    MachineState.objects.update_or_create(machine_id=machine.pk, defaults={"spool_dropped": 161})
    assert evaluate(t0 + minutes(13))["fired"] == 1
    assert Alert.objects.filter(rule=rule).count() == 2


def test_spool_dropping_fires_when_the_server_refuses_samples_and_says_why(machine, t0):
    rule = a_rule("spool_dropping", 10, t0)
    assert evaluate(t0)["fired"] == 0
    MachineState.objects.update_or_create(
        machine_id=machine.pk, defaults={"spool_refused": 4, "last_refusal": "400: samples[0].ts: not a number"}
    )
    assert evaluate(t0 + minutes(1)) == {"fired": 1, "resolved": 0}
    message = open_alerts(rule)[0].message
    assert "4 refused by the server" in message and "samples[0].ts: not a number" in message
    assert "dropped" not in message, "its spool did not drop anything"
    assert SpoolWatch.objects.get(rule=rule, machine=machine).refused == 4
    assert evaluate(t0 + minutes(12)) == {"fired": 0, "resolved": 1}


def test_spool_dropping_fires_for_a_reinstalled_agent_whose_new_spool_drops(machine, t0):
    rule = a_rule("spool_dropping", 10, t0)

    def counts(dropped: int) -> None:
        MachineState.objects.update_or_create(machine_id=machine.pk, defaults={"spool_dropped": dropped})

    counts(100)
    evaluate(t0)
    counts(0)  # a new spool: its counts start at 0
    assert evaluate(t0 + minutes(1)) == {"fired": 0, "resolved": 0}
    assert SpoolWatch.objects.get(rule=rule, machine=machine).dropped == 0
    counts(5)
    assert evaluate(t0 + minutes(2)) == {"fired": 1, "resolved": 0}
    assert "5 dropped in all" in open_alerts(rule)[0].message


def test_a_rule_for_one_machine_ignores_the_others(machine, t0):
    other = Machine.objects.create(name="gpu-02", last_seen_at=t0)
    rule = a_rule("machine_offline", 5, t0, machine=other)
    seen(machine, t0)
    assert evaluate(t0 + minutes(10))["fired"] == 1
    assert [a.machine for a in open_alerts(rule)] == [other]


def test_disabling_a_rule_resolves_its_alerts_and_a_disabled_rule_fires_nothing(machine, t0):
    rule = a_rule("machine_offline", 5, t0, webhook_url="http://127.0.0.1:9/hook")
    seen(machine, t0)
    assert evaluate(t0 + minutes(10))["fired"] == 1
    rule.enabled = False
    rule.save()
    assert evaluate(t0 + minutes(11)) == {"fired": 0, "resolved": 1}
    assert Alert.objects.get(rule=rule).resolution == "rule disabled"
    assert evaluate(t0 + minutes(12)) == {"fired": 0, "resolved": 0}


def test_a_rule_with_a_webhook_queues_fired_then_resolved(machine, t0):
    rule = a_rule("machine_offline", 5, t0, webhook_url="http://127.0.0.1:9/hook")
    seen(machine, t0)
    evaluate(t0 + minutes(6))
    evaluate(t0 + minutes(7))
    seen(machine, t0 + minutes(8))
    evaluate(t0 + minutes(8))
    fired, resolved = WebhookDelivery.objects.order_by("pk")
    assert (fired.event, resolved.event) == ("fired", "resolved")
    assert fired.url == rule.webhook_url and fired.next_try_at == t0 + minutes(6)
    assert fired.payload["event"] == "fired" and fired.payload["alert"]["machine"] == "gpu-01"
    assert fired.payload["rule"] == {
        "id": rule.pk,
        "name": rule.name,
        "kind": "machine_offline",
        "threshold": 5.0,
        "unit": "min",
    }
    assert resolved.payload["alert"]["resolved_at"] == (t0 + minutes(8)).isoformat()
    assert resolved.payload["text"].startswith("[RESOLVED] machine_offline rule: gpu-01 has sent nothing")
    assert Alert.objects.get(rule=rule).last_notified == "resolved"


def test_the_celery_task_evaluates_with_the_current_time(machine):
    a_rule("machine_offline", 5, timezone.now())
    seen(machine, timezone.now() - minutes(6))
    assert tasks.evaluate() == {"fired": 1, "resolved": 0}
