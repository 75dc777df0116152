"""``hwprobe worker``: jobs taken over HTTPS (no broker), its spool, its policy reports, its stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hwprobe import worker
from hwprobe.executor import ServerApi
from hwprobe.jobspool import JobSpool, Outbox
from hwprobe.tests.test_executor import PY, FakeDashboard, job_spec, py, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups are checked through /proc")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dash():
    fake = FakeDashboard().start()
    yield fake
    fake.stop()


def a_job(job_id: int, spec: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
    return {"job_id": job_id, "attempt": attempt, "spec": spec}


def allow_python(tmp_path: Path) -> str:
    config = tmp_path / "worker.toml"
    config.write_text(f'allow_shell = true\n[[allow]]\nname = "python -c"\nargv = ["{PY}", "-c", "**"]\n')
    return str(config)


class InProcess:
    """A :class:`hwprobe.worker.Worker` in a thread of this process, against the fake dashboard."""

    def __init__(self, dash: FakeDashboard, tmp_path: Path, config: str | None = None, concurrency: int = 2) -> None:
        self.api = ServerApi(dash.url, "tok", backoff_base_s=0.05, backoff_cap_s=0.2)
        self.spool = JobSpool(tmp_path / "spool.sqlite3")
        options = {"heartbeat_s": 0.2, "flush_s": 0.1, "jobs_dir": tmp_path / "jobs"}
        self.worker = worker.Worker(
            self.api, self.spool, config, options, concurrency, poll_wait_s=0.2, backoff_cap_s=0.2
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.shutdown()
        self.thread.join(30)
        assert not self.thread.is_alive()


def test_the_worker_takes_a_job_runs_it_and_holds_it_until_its_finish_is_delivered(dash, tmp_path):
    dash.jobs.append(a_job(7, job_spec(py("import time; print('hi', flush=True); time.sleep(1)"))))
    w = InProcess(dash, tmp_path, allow_python(tmp_path))
    try:
        assert wait_until(lambda: "hi" in dash.text(), 10)
        assert wait_until(lambda: any(p["held"] == [{"job": 7, "attempt": 1}] for p in dash.polls), 5)
        assert wait_until(lambda: dash.finished, 10)
        polls = len(dash.polls)
        assert wait_until(lambda: len(dash.polls) > polls + 1, 5)
        assert dash.polls[-1]["held"] == [], "a delivered finish is held no more"
    finally:
        w.stop()
    assert dash.finished[0]["outcome"] == "succeeded"
    assert len({p["worker"] for p in dash.polls}) == 1 and dash.polls[0]["worker"] == w.spool.worker_id


def test_jobs_run_at_most_concurrency_at_a_time(dash, tmp_path):
    # Each job records when its own process ran. The polls' "held" lists cannot tell this: they
    # also name attempts whose finish is not delivered yet, so 2 running + 1 finish in flight is 3.
    spans = tmp_path / "spans"
    spans.mkdir()
    for i in range(3):
        out = str(spans / str(i))
        code = f"import time; s = time.time(); time.sleep(1.2); open({out!r}, 'w').write(f'{{s}} {{time.time()}}')"
        dash.jobs.append(a_job(10 + i, job_spec(py(code))))
    w = InProcess(dash, tmp_path, allow_python(tmp_path), concurrency=2)
    try:
        assert wait_until(lambda: len(dash.finished) == 3, 20)
    finally:
        w.stop()
    assert [f["outcome"] for f in dash.finished] == ["succeeded"] * 3
    runs = [tuple(map(float, (spans / str(i)).read_text().split())) for i in range(3)]
    events = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs], key=lambda ev: (ev[0], ev[1]))
    at_once, most = 0, 0
    for _, step in events:
        at_once += step
        most = max(most, at_once)
    assert most <= 2, f"never three at once: {runs}"


def test_a_worker_that_restarts_no_longer_holds_the_attempts_of_its_earlier_run(tmp_path):
    spool = JobSpool(tmp_path / "spool.sqlite3")
    spool.take(7, 1)
    spool.take(8, 1)
    spool.add_log(7, 1, {"seq": 1, "stream": "stdout", "text": "partial\n", "ts": time.time()})
    spool.add_finish(8, 1, {"attempt": 1, "outcome": "succeeded", "exit_code": 0, "message": ""})
    worker_id = spool.worker_id
    spool.close()
    again = JobSpool(tmp_path / "spool.sqlite3")
    assert again.worker_id == worker_id, "the id survives restarts: the server knows its attempts by it"
    assert again.abandon_running() == [(7, 1)]
    assert again.held() == [(8, 1)], "a finish not yet delivered is still held"
    assert again.pending() == 2, "the log of the abandoned attempt is still sent"


def test_the_outbox_sends_in_order_keeps_reports_while_the_server_is_away_and_drops_refused_ones(dash, tmp_path):
    spool = JobSpool(tmp_path / "spool.sqlite3")
    api = ServerApi(dash.url, "tok")
    for seq in (1, 2, 3):
        spool.add_log(7, 1, {"seq": seq, "stream": "stdout", "text": f"{seq}\n", "ts": time.time()})
    spool.set_heartbeat(7, 1, {"attempt": 1, "pid": 1, "pgid": 1})
    spool.set_heartbeat(7, 1, {"attempt": 1, "pid": 2, "pgid": 2})  # only the latest is kept
    spool.add_finish(7, 1, {"attempt": 1, "outcome": "succeeded", "exit_code": 0, "message": ""})
    dash.down = True
    outbox = Outbox(spool, api.deliver, base_s=0.05, cap_s=0.1).start()
    time.sleep(0.5)
    assert spool.pending() == 5 and dash.accepted == []
    dash.down = False
    assert outbox.stop(5)
    assert dash.accepted == ["log", "heartbeat", "finish"]
    assert dash.text() == "1\n2\n3\n" and dash.beats == [{"attempt": 1, "pid": 2, "pgid": 2}]
    spool.add_finish(9, 1, {"attempt": 1, "outcome": "bogus", "exit_code": 0, "message": ""})
    dash.stale = True  # 409: the server decided otherwise; the report must not block the outbox
    assert Outbox(spool, api.deliver).start().stop(5)


def start_process(dash: FakeDashboard, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    argv = [PY, "-m", "hwprobe", "worker", "--server", dash.url, "--token", "tok", "--state-dir", str(tmp_path)]
    return subprocess.Popen(
        [*argv, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )


def read_until(proc: subprocess.Popen[str], text: str, timeout_s: float = 20) -> str:
    seen = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"no {text!r} in:\n{''.join(seen)}")


def test_the_worker_command_needs_no_celery(tmp_path):
    code = "import sys; sys.modules['celery'] = sys.modules['kombu'] = None; import hwprobe.worker; print('ok')"
    assert subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True).stdout == "ok\n"


def test_the_worker_command_exits_2_when_the_server_refuses_its_token(dash, capsys):
    dash.config_status = 401
    assert worker.main(["--server", dash.url, "--token", "tok"]) == 2
    assert "invalid token" in capsys.readouterr().err


def test_the_worker_command_reports_the_policy_takes_work_and_stops_on_sigterm(dash, tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text('builtin_workloads = false\n[[allow]]\nname = "ft"\nargv = ["python3", "train.py", "*"]\n')
    # --broker is what older install scripts pass: accepted and ignored.
    proc = start_process(dash, tmp_path, "--config", str(config), "--broker", "redis://old:6379/0")
    try:
        out = read_until(proc, "ready")
        assert "--broker is ignored" in out
        assert len(dash.policies) == 1
        assert dash.policies[0]["builtin_workloads"] is False and dash.policies[0]["allow_shell"] is False
        assert dash.policies[0]["templates"] == [{"name": "ft", "argv": ["python3", "train.py", "*"], "workdir": None}]
        assert wait_until(lambda: len(dash.polls) >= 2, 10), "it keeps asking for work"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_refused_policy_report_is_logged_and_the_worker_starts_anyway(dash, tmp_path, monkeypatch):
    dash.policy_status = 400
    monkeypatch.setenv("HWPROBE_CONFIG", str(tmp_path / "absent.toml"))
    (tmp_path / "absent.toml").write_text("")  # an empty file: the built-in defaults, reported like any policy
    proc = start_process(dash, tmp_path)
    try:
        out = read_until(proc, "ready")
        assert "could not send this host's policy to the dashboard: 400: templates: refused" in out
        assert dash.policies == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_sigterm_stops_running_jobs_and_a_preemptible_one_goes_back_to_the_queue(dash, tmp_path):
    code = "import time; print('up', flush=True); time.sleep(300)"
    dash.jobs.append(a_job(7, job_spec(py(code), grace_s=1)))
    dash.jobs.append(a_job(8, job_spec(py(code), grace_s=1, preemptible=True)))
    proc = start_process(dash, tmp_path, "--config", allow_python(tmp_path), "--heartbeat", "0.2")
    try:
        read_until(proc, "ready")
        assert wait_until(lambda: len({b["pgid"] for b in dash.beats}) == 2 and "up" in dash.text(), 15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()
    assert sorted(f["outcome"] for f in dash.finished) == ["failed", "preempted"]
    assert all("stopped" in f["message"] for f in dash.finished)


def test_an_edited_policy_is_reported_again_before_the_next_job_and_only_then(dash, tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text("allow_shell = false\n")
    api = ServerApi(dash.url, "tok")
    reporter = worker.PolicyReporter(api)
    assert reporter.report(worker.effective_policy(str(config))[0])
    w = worker.Worker(api, JobSpool(), str(config), {"heartbeat_s": 0.2, "flush_s": 0.1}, reporter=reporter)
    w.outbox.start()
    w._free.acquire()
    w._run_one(7, 1, job_spec(["touch", str(tmp_path / "ran")]))
    assert len(dash.policies) == 1  # unchanged: not sent again
    config.write_text("allow_shell = true\n")
    w._free.acquire()
    w._run_one(8, 1, job_spec(["touch", str(tmp_path / "ran")]))
    assert [p["allow_shell"] for p in dash.policies] == [False, True]
    config.write_text("allow_shel = true\n")  # broken: the worker refuses everything, and says so
    w._free.acquire()
    w._run_one(9, 1, job_spec(["python3", "-m", "hwprobe.workloads", "train"]))
    assert dash.policies[-1]["builtin_workloads"] is False and dash.policies[-1]["templates"] == []
    assert w.outbox.stop(5)
    assert [f["outcome"] for f in dash.finished] == ["refused", "refused", "refused"]
    assert "invalid" in dash.finished[-1]["message"]
    assert not (tmp_path / "ran").exists()


def test_the_policy_watch_reports_an_edit_while_no_job_comes(dash, tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text("allow_shell = false\n")
    reporter = worker.PolicyReporter(ServerApi(dash.url, "tok"))
    reporter.report(worker.effective_policy(str(config))[0])
    stop = threading.Event()
    thread = worker.watch_policy(reporter, str(config), every_s=0.05, stop=stop)
    try:
        config.write_text("allow_shell = true\n")
        assert wait_until(lambda: len(dash.policies) == 2, 5)
        time.sleep(0.2)
        assert len(dash.policies) == 2  # nothing new: nothing sent
    finally:
        stop.set()
        thread.join(2)


def test_each_dashboard_gets_its_own_spool_so_job_ids_never_mix(tmp_path):
    a = worker.spool_path(str(tmp_path), "https://a.example")
    assert a == worker.spool_path(str(tmp_path), "https://a.example/")
    assert a != worker.spool_path(str(tmp_path), "https://b.example") and a.parent == tmp_path
