"""`python3 dev.py run` as a new user meets it: the first job on a machine without a GPU, Ctrl-C,
and a dev.py killed outright.

Each test starts the whole stack (web, Celery worker and beat, agent, job worker) on its own port
with its own SQLite data folder, as a fresh clone would, so they are slow and need no database.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import BROWSER_ZONE, CHROMIUM, CHROMIUM_ARGS
from dashboard.fleet.tests.test_agent_end_to_end import free_port

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.skipif(sys.platform != "linux", reason="process trees are read through /proc"),
]


class DevRun:
    """dev.py run in a fresh data folder; its console in a file for failures."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.data = tmp / "data"
        self.log = tmp / "dev.log"
        # Nothing of the test run's configuration: dev.py picks its own SQLite file and broker.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "DEBUG", "LOG_LEVEL")
        }
        env["DASHBOARD_DATA_DIR"] = str(self.data)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "dev.py"), "run", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 150
        while "dashboard on" not in self.output():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()

    def tree(self) -> list[psutil.Process]:
        """dev.py's descendants: the children and everything they started."""
        return psutil.Process(self.proc.pid).children(recursive=True)

    def admin_password(self) -> str:
        return (self.data / "admin-password.txt").read_text().split()[-1]

    def job_status(self, pk: int) -> str:
        with sqlite3.connect(self.data / "dashboard.sqlite3") as db:
            return db.execute("SELECT status FROM jobs_job WHERE id = ?", (pk,)).fetchone()[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def dev(tmp_path):
    run = DevRun(tmp_path)
    yield run
    run.stop()


def alive(processes: list[psutil.Process]) -> list[str]:
    return [" ".join(p.cmdline()[:4]) for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.browser
def test_a_new_user_clicks_the_first_template_and_gets_a_running_job_within_ten_seconds(dev):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(timezone_id=BROWSER_ZONE).new_page()
        page.goto(dev.url + "/login/?next=/jobs/new/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", dev.admin_password())
        page.click("button[type=submit]")
        page.wait_for_url(dev.url + "/jobs/new/", wait_until="networkidle")
        page.locator("#templates button.template").first.click()
        # This machine has no GPU: the template asks for none, and the form says where it can start.
        assert page.input_value("#id_gpus") == "0"
        page.check("#id_preemptible")  # so that Ctrl-C can queue it again below
        started = time.monotonic()
        page.click("button[type=submit].primary")
        try:
            page.wait_for_url(re.compile(r".*/jobs/\d+/$"), timeout=10_000)
        except Exception:  # noqa: BLE001 - say what the form said
            raise AssertionError(page.inner_text("form.job-form")[:2000]) from None
        pk = int(page.url.rstrip("/").split("/")[-1])
        while dev.job_status(pk) != "running":
            assert time.monotonic() - started < 10, f"job #{pk} is {dev.job_status(pk)}\n{dev.output()}"
            time.sleep(0.2)
        browser.close()
    # The console's one line for it (the dashboard's log reaches the console a moment after the
    # status changed in the database).
    deadline = time.monotonic() + 10
    while f"job #{pk}" not in dev.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"job #{pk}" in dev.output()

    # Ctrl-C: the running preemptible job goes back to the queue instead of being left lost.
    tree = dev.tree()
    dev.proc.send_signal(signal.SIGINT)
    assert dev.proc.wait(60) == 0
    assert dev.job_status(pk) == "queued", dev.output()
    time.sleep(1)
    assert alive(tree) == []


@pytest.mark.slow
def test_killing_dev_py_outright_ends_every_process_it_started(dev):
    tree = dev.tree()
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    for part in ("runserver", "celery", "worker", "beat", "hwprobe run", "hwprobe worker", "_guard"):
        assert part in names, part
    dev.proc.kill()  # SIGKILL: no handler runs, as when a terminal is closed hard
    dev.proc.wait()
    deadline = time.monotonic() + 15
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive(tree) == []


def test_help_prints_the_commands_and_flags_and_starts_nothing(tmp_path):
    env = dict(os.environ, DASHBOARD_DATA_DIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "run", "--help"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    assert "--port" in out.stdout and "--verbose" in out.stdout
    assert not any(tmp_path.iterdir())  # no database, no token: nothing ran
