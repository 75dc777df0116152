"""The rollup task through a real Celery worker (Redis when REDIS_URL is set, else the embedded broker)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import make_batch
from dashboard.fleet import tasks
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import SystemRollup
from dashboard.fleet.payload import Batch


@pytest.mark.integration
def test_a_real_worker_runs_the_beat_tasks(process_env, machine):
    """Rollups, alert evaluation and placement, as beat would send them, through a real worker."""
    from datetime import timedelta

    from django.utils import timezone

    from dashboard.alerts import tasks as alert_tasks
    from dashboard.alerts.models import Alert, AlertRule
    from dashboard.jobs import tasks as job_tasks

    store_batch(machine, Batch.model_validate(make_batch(range(1, 7))))
    hot = make_batch([7])
    for gpu in hot["samples"][0]["gpus"]:
        gpu["temp_c"] = {"min": 90.0, "mean": 91.0, "max": 92.0}
    store_batch(machine, Batch.model_validate(hot))
    AlertRule.objects.create(
        name="hot", kind="gpu_temperature", threshold=85, created_at=timezone.now() - timedelta(minutes=5)
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dashboard",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        env=process_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        tasks.rollup.delay()
        alert_tasks.evaluate.delay()
        job_tasks.place.delay()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            SystemRollup.objects.filter(machine=machine).exists() and Alert.objects.exists()
        ):
            assert worker.poll() is None, worker.stdout.read()
            time.sleep(0.3)
        assert SystemRollup.objects.filter(machine=machine, resolution_s=60).exists()
        assert Alert.objects.filter(machine=machine, resolved_at=None).count() == 2  # both GPUs at 91 °C
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
