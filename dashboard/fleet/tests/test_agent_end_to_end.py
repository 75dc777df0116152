"""A real server (gunicorn) and a real agent process: samples arrive, and survive a server outage."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_sample
from dashboard.fleet.models import Machine, SystemSample
from hwprobe.spool import Spool

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict, port: int):
        self.env, self.port, self.proc = env, port, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "dashboard.wsgi",
                "-b",
                f"127.0.0.1:{self.port}",
                "-w",
                "1",
                # Threads, as in production: a host's job long-poll holds one for up to 25 s.
                "--threads",
                "8",
                "--graceful-timeout",
                "5",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self, quick: bool = False) -> None:
        """SIGTERM: gunicorn's graceful stop, which lets requests in flight finish (a job long-poll
        holds its thread for up to JOB_POLL_WAIT_S). ``quick`` (SIGINT) drops them: for teardowns,
        where waiting out an idle long-poll cost 5 s a test."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if quick else signal.SIGTERM)
            self.proc.wait(timeout=20)


@pytest.fixture
def server(process_env):
    s = Server(process_env, free_port())
    s.start()
    yield s
    s.stop(quick=True)


def start_agent(env, server, token, spool: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hwprobe",
            "run",
            "--server",
            server.url,
            "--token",
            token,
            "--interval",
            "0.25",
            "--send-every",
            "1",
            "--spool",
            str(spool),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def stop_agent(agent: subprocess.Popen) -> str:
    agent.send_signal(signal.SIGTERM)
    out, _ = agent.communicate(timeout=30)
    assert agent.returncode == 0, out
    return out


@pytest.mark.integration
def test_a_real_agent_reports_to_a_real_server(process_env, server, machine, tmp_path):
    token = machine.issue_token()
    agent = start_agent(process_env, server, token, tmp_path / "spool.sqlite")
    try:
        wait_for(lambda: SystemSample.objects.filter(machine=machine).count() >= 3, 40, "three samples")
    finally:
        stop_agent(agent)
    machine.refresh_from_db()
    assert machine.hostname == socket.gethostname()
    assert machine.is_online() and machine.latest["system"]["cpu_percent"] is not None
    row = SystemSample.objects.filter(machine=machine).order_by("seq").last()
    assert row.mem_used_bytes_mean > 0 and row.mem_total_bytes > 0


@pytest.mark.integration
def test_the_agent_measures_its_drive_once_and_the_server_keeps_the_figure(process_env, server, machine, tmp_path):
    """The planner's "fits if streamed" bound needs the drive's read speed: the agent measures it
    in the background after it starts, keeps it in its state folder, and the next batch's
    inventory carries it to the machine row; a restarted agent reuses the kept figure."""
    env = dict(
        process_env, HWPROBE_STORAGE_PROBE="1", HWPROBE_STATE_DIR=str(tmp_path), HWPROBE_STORAGE_DIR=str(tmp_path)
    )
    token = machine.issue_token()
    agent = start_agent(env, server, token, tmp_path / "spool.sqlite")
    try:

        def measured() -> bool:
            machine.refresh_from_db()
            return machine.storage_read_bytes_per_s is not None

        wait_for(measured, 60, "the storage read speed on the machine row")
    finally:
        out = stop_agent(agent)
    assert "storage read speed of" in out
    kept = json.loads((tmp_path / "storage.json").read_text())
    assert (
        kept["storage_path"] == str(tmp_path) and kept["storage_read_bytes_per_s"] == machine.storage_read_bytes_per_s
    )
    assert not list(tmp_path.glob(".hwprobe-read-*"))  # the scratch file is gone
    first = machine.storage_read_bytes_per_s

    before = SystemSample.objects.filter(machine=machine).count()
    agent = start_agent(env, server, token, tmp_path / "spool.sqlite")
    try:
        wait_for(
            lambda: SystemSample.objects.filter(machine=machine).count() >= before + 2, 40, "samples after a restart"
        )
    finally:
        stop_agent(agent)
    machine.refresh_from_db()
    assert machine.storage_read_bytes_per_s == first  # measured once: the restart read the kept figure


@pytest.mark.integration
def test_samples_taken_while_the_server_is_down_arrive_exactly_once(process_env, server, machine, tmp_path):
    token = machine.issue_token()
    agent = start_agent(process_env, server, token, tmp_path / "spool.sqlite")
    try:
        wait_for(lambda: SystemSample.objects.filter(machine=machine).exists(), 40, "the first sample")
        server.stop()
        down_from = SystemSample.objects.filter(machine=machine).count()
        time.sleep(5)  # the agent keeps sampling into its spool
        server.start()
        wait_for(
            lambda: SystemSample.objects.filter(machine=machine).count() >= down_from + 6, 60, "the spooled samples"
        )
    finally:
        stop_agent(agent)
    seqs = list(SystemSample.objects.filter(machine=machine).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or a duplicate in the stored seqs"
    times = list(SystemSample.objects.filter(machine=machine).order_by("seq").values_list("ts", flat=True))
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) < 2.5, f"a hole in the timeline: {max(gaps)} s"
    assert Machine.objects.get(pk=machine.pk).spool_dropped == 0


def spool_holding(path: Path, stamps) -> Path:
    """A spool file whose queue holds one sample per ``ts`` in ``stamps`` (seq 1, 2, ...), as an
    agent left it: a stamp the server refuses shows what happens to a bad sample among good ones."""
    spool = Spool(path)
    for ts in stamps:
        sample = make_sample(0, gpus=0)
        del sample["seq"]
        sample["ts"] = ts
        spool.put(sample)
    spool.close()
    return path


@pytest.mark.integration
def test_a_sample_the_server_refuses_is_set_aside_alone_and_shown_with_the_reason(
    process_env, server, machine, tmp_path, client, viewer
):
    """A spool that holds a malformed sample between good ones (as a buggy agent build might leave
    it): the real agent splits the refused batch until the bad sample is alone, sets only that one
    aside, and the server shows how many and why; every other seq is stored once."""
    now = time.time()
    spool_file = spool_holding(tmp_path / "spool.sqlite", (now - 3, "soon", now - 2))

    token = machine.issue_token()
    agent = start_agent(process_env, server, token, spool_file)
    try:
        wait_for(lambda: SystemSample.objects.filter(machine=machine).count() >= 5, 40, "five samples")
        wait_for(lambda: Machine.objects.get(pk=machine.pk).spool_refused == 1, 20, "the agent's refused count")
    finally:
        out = stop_agent(agent)
    assert "retrying in halves" in out and "seq 2 as malformed" in out
    seqs = list(SystemSample.objects.filter(machine=machine).order_by("seq").values_list("seq", flat=True))
    assert seqs == [1, *range(3, seqs[-1] + 1)], "only seq 2 is missing, nothing twice"
    machine.refresh_from_db()
    assert machine.last_refusal.startswith("400: samples[0].ts")

    listed = subprocess.run(
        [sys.executable, "-m", "hwprobe", "dead-letters", "--spool", str(spool_file)],
        cwd=ROOT,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "seq 2  400: samples[0].ts" in listed.stdout
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/").content.decode()
    assert "1 sample refused" in page and "samples[0].ts" in page


@pytest.mark.integration
def test_a_sample_set_aside_and_put_back_after_the_server_changed_is_stored_once(
    process_env, server, machine, tmp_path
):
    """A machine whose clock ran ahead of what the server tolerates: its sample is refused and set
    aside. Once the server tolerates more (a setting, an upgrade), ``hwprobe dead-letters --requeue``
    puts it back while the agent runs, and the agent delivers it: every seq stored once."""
    now = time.time()
    # seq 2 is 15 minutes ahead: over INGEST_MAX_FUTURE_S (300)
    spool_file = spool_holding(tmp_path / "spool.sqlite", (now - 3, now + 900, now - 2))

    token = machine.issue_token()
    # A short backoff cap: while the server restarts the agent's retries back off, and at the
    # default cap (60 s) one wait could outlast the test's.
    agent = start_agent(process_env, server, token, spool_file, "--backoff-cap", "2")
    try:
        wait_for(lambda: Machine.objects.get(pk=machine.pk).spool_refused == 1, 40, "seq 2 set aside")
        assert "in the future" in Machine.objects.get(pk=machine.pk).last_refusal
        server.stop()
        server.env = {**process_env, "INGEST_MAX_FUTURE_S": "3600"}
        server.start()
        requeued = subprocess.run(
            [sys.executable, "-m", "hwprobe", "dead-letters", "--spool", str(spool_file), "--requeue"],
            cwd=ROOT,
            env=process_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert requeued.returncode == 0, requeued.stderr
        assert "1 sample(s) put back" in requeued.stderr and "seq 2" in requeued.stderr
        wait_for(lambda: SystemSample.objects.filter(machine=machine, seq=2).exists(), 40, "seq 2 stored")
        wait_for(lambda: SystemSample.objects.filter(machine=machine).count() >= 5, 20, "five samples")
    except AssertionError as exc:
        agent.send_signal(signal.SIGTERM)
        said = agent.communicate(timeout=30)[0]
        raise AssertionError(f"{exc}; the agent said:\n{said[-3000:]}") from None
    finally:
        if agent.poll() is None:
            stop_agent(agent)
    seqs = list(SystemSample.objects.filter(machine=machine).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, seqs[-1] + 1)), "every seq once, the one put back included"
    left = Spool(spool_file)
    try:
        assert left.dead_letters() == []
        assert left.dead == 1, "the count of samples ever set aside stays"
    finally:
        left.close()
