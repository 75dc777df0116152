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
def test_a_real_worker_runs_the_rollup_task(process_env, machine):
    store_batch(machine, Batch.model_validate(make_batch(range(1, 7))))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "--pool", "solo", "--loglevel", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        env=process_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        tasks.rollup.delay()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not SystemRollup.objects.filter(machine=machine).exists():
            assert worker.poll() is None, worker.stdout.read()
            time.sleep(0.3)
        assert SystemRollup.objects.filter(machine=machine, resolution_s=60).exists()
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
