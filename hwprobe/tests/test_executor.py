"""One job run against a real local HTTP server that plays the dashboard's agent endpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hwprobe.executor import LogShipper, ServerApi, run_job
from hwprobe.jobspool import JobSpool
from hwprobe.policy import Policy, Rule

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups are checked through /proc")

PY = sys.executable
ALLOW_PY = Policy(rules=[Rule("python -c", (PY, "-c", "**"))], allow_shell=True)


class FakeDashboard:
    """Answers config / policy / next / heartbeat / log / finish like dashboard/jobs/api.py, and records them."""

    def __init__(self) -> None:
        self.cancel = self.preempt = self.stale = False
        self.fail_next = 0  # this many requests get a 503 first
        self.down = False  # every request gets a 503, as from a proxy whose web tier is away
        self.jobs: list[dict[str, Any]] = []  # handed out by /jobs/next, oldest first
        self.polls: list[dict[str, Any]] = []
        self.accepted: list[str] = []  # the actions answered 200, in order
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.chunks: dict[int, dict[str, Any]] = {}
        self.finished: list[dict[str, Any]] = []
        self.beats: list[dict[str, Any]] = []
        self.config_status = 200
        self.policy_status = 200
        self.policies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        with self.lock:
            self.calls.append((action, body))
            if self.fail_next > 0 or self.down:
                self.fail_next = max(0, self.fail_next - 1)
                return 503, {"error": "try again"}
            if not self.stale or action in ("next", "policy"):
                self.accepted.append(action)
            if action == "next":
                self.polls.append(body)
                return (200, self.jobs.pop(0)) if self.jobs else (204, None)
            if action == "policy":
                if self.policy_status != 200:
                    return self.policy_status, {"error": "templates: refused"}
                self.policies.append(body)
                return 200, {"ok": True, "templates": len(body["templates"])}
            if self.stale:
                return 409, {"error": "attempt 1 is no longer current"}
            if action == "heartbeat":
                self.beats.append(body)
                return 200, {"cancel": self.cancel, "preempt": self.preempt}
            if action == "log":
                for c in body["chunks"]:
                    self.chunks.setdefault(c["seq"], c)
                return 200, {"stored": len(body["chunks"])}
            if action == "finish":
                self.finished.append(body)
                return 200, {"ok": True}
        return 404, {"error": "not found"}

    def start(self) -> FakeDashboard:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                ok = fake.config_status == 200
                self._reply(
                    fake.config_status,
                    {"machine": "gpu-01", "jobs": "/api/v1/agent/jobs/next", "poll_wait_s": 0.2}
                    if ok
                    else {"error": "invalid token"},
                )

            def do_POST(self) -> None:  # noqa: N802
                assert self.headers["Authorization"] == "Bearer tok"
                action = self.path.rsplit("/", 1)[-1]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._reply(*fake.answer(action, body))

            def _reply(self, status: int, answer: dict[str, Any] | None) -> None:
                raw = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def actions(self) -> list[str]:
        return [a for a, _ in self.calls]

    def text(self, stream: str | None = None) -> str:
        return "".join(c["text"] for _, c in sorted(self.chunks.items()) if stream in (None, c["stream"]))


@pytest.fixture
def dash():
    fake = FakeDashboard().start()
    yield fake
    fake.stop()


def job_spec(argv=None, shell=None, **kw) -> dict[str, Any]:
    spec = {
        "name": "t",
        "kind": "train",
        "argv": argv,
        "shell": shell,
        "workdir": None,
        "env": {},
        "gpus": [],
        "gpu_uuids": [],
        "max_runtime_s": None,
        "grace_s": 2,
    }
    spec.update(kw)
    return spec


def run(dash: FakeDashboard, spec: dict[str, Any], tmp_path: Path, policy: Policy = ALLOW_PY, **kw):
    api = ServerApi(dash.url, "tok", backoff_base_s=0.05, backoff_cap_s=0.2)
    options = {"heartbeat_s": 0.2, "flush_s": 0.2, "jobs_dir": tmp_path / "jobs", **kw}
    return run_job(api, 7, 1, spec, policy, **options)


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (our PID 1 may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def wait_until(condition, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_command_that_exits_zero_succeeds_with_its_output_in_the_log(dash, tmp_path):
    result = run(dash, job_spec(py("import sys; print('hello'); print('oops', file=sys.stderr)")), tmp_path)
    assert result.outcome == "succeeded" and result.exit_code == 0
    assert dash.actions()[0] in ("heartbeat", "log") and dash.actions()[-1] == "finish"
    assert dash.finished == [{"attempt": 1, "outcome": "succeeded", "exit_code": 0, "message": "exited with code 0"}]
    assert dash.text("stdout") == "hello\n" and dash.text("stderr") == "oops\n"
    assert sorted(dash.chunks) == list(range(1, len(dash.chunks) + 1))
    assert dash.beats and dash.beats[0]["pgid"] == dash.beats[0]["pid"]
    assert (tmp_path / "jobs" / "7").is_dir(), "a job without a workdir runs in its own folder"


def test_a_failing_command_fails_with_its_exit_code(dash, tmp_path):
    result = run(dash, job_spec(py("import sys; sys.exit(3)")), tmp_path)
    assert (result.outcome, result.exit_code) == ("failed", 3)
    assert dash.finished[0]["message"] == "exited with code 3"


def test_a_missing_program_fails_with_127_and_says_why(dash, tmp_path):
    policy = Policy(rules=[Rule("x", ("no-such-program-here",))])
    result = run(dash, job_spec(["no-such-program-here"]), tmp_path, policy)
    assert (result.outcome, result.exit_code) == ("failed", 127)
    assert "cannot start 'no-such-program-here'" in dash.text("stderr")


def test_output_is_streamed_while_the_job_runs(dash, tmp_path):
    code = "import time\nfor i in range(30):\n    print('line', i, flush=True); time.sleep(0.05)\ntime.sleep(1.5)"
    worker = threading.Thread(target=run, args=(dash, job_spec(py(code)), tmp_path))
    worker.start()
    assert wait_until(lambda: "line 29" in dash.text(), 5), "output must arrive before the job ends"
    assert not dash.finished
    worker.join(10)
    assert dash.finished[0]["outcome"] == "succeeded"


def test_large_output_is_sent_in_numbered_chunks_of_at_most_16_kib(dash, tmp_path):
    code = "import sys\nfor i in range(3000): sys.stdout.write(f'{i:05d} ' + 'x' * 40 + '\\n')"
    run(dash, job_spec(py(code)), tmp_path)
    expected = "".join(f"{i:05d} " + "x" * 40 + "\n" for i in range(3000))
    assert dash.text("stdout") == expected
    assert all(len(c["text"]) <= 16 * 1024 for c in dash.chunks.values())
    assert len(dash.chunks) >= len(expected) // (16 * 1024)


def test_the_job_sees_its_gpus_and_a_clean_environment(dash, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKER_SECRET", "s3cret")
    monkeypatch.setenv("HF_HOME", "/data/hf")
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    policy = Policy(rules=ALLOW_PY.rules, pass_env=("HF_*",))
    spec = job_spec(py(code), gpus=[0, 2], gpu_uuids=["GPU-aaa", "GPU-ccc"], env={"EPOCHS": "3"})
    run(dash, spec, tmp_path, policy)
    env = json.loads(dash.text("stdout"))
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-aaa,GPU-ccc"
    assert env["HWPROBE_JOB_ID"] == "7" and env["HWPROBE_JOB_ATTEMPT"] == "1"
    assert env["EPOCHS"] == "3" and env["HF_HOME"] == "/data/hf"
    assert "WORKER_SECRET" not in env


def test_a_cpu_only_job_sees_no_gpu_and_indexes_stand_in_for_unknown_uuids(dash, tmp_path):
    code = "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    run(dash, job_spec(py(code)), tmp_path)
    assert dash.text("stdout") == "''\n"
    dash.chunks.clear()
    run(dash, job_spec(py(code), gpus=[1]), tmp_path)
    assert dash.text("stdout") == "'1'\n"


def test_cancel_stops_the_whole_process_group_including_grandchildren(dash, tmp_path):
    pids = tmp_path / "pids"
    code = f"""
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "300"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(300)
    """
    worker = threading.Thread(target=run, args=(dash, job_spec(py(code)), tmp_path))
    worker.start()
    assert wait_until(lambda: pids.exists() and pids.read_text().count(" ") == 1)
    command_pid, grandchild = (int(p) for p in pids.read_text().split())
    pgid = dash.beats[0]["pgid"]
    assert os.getpgid(grandchild) == pgid
    dash.cancel = True
    worker.join(15)
    assert dash.finished[0]["outcome"] == "cancelled"
    assert dash.finished[0]["exit_code"] == -signal.SIGTERM
    assert not alive(command_pid) and not alive(grandchild)
    assert group_members(pgid) == []


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(dash, tmp_path):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(300)"
    )
    worker = threading.Thread(target=run, args=(dash, job_spec(py(code), grace_s=1), tmp_path))
    worker.start()
    assert wait_until(lambda: "ready" in dash.text())
    dash.cancel = True
    started = time.monotonic()
    worker.join(15)
    assert 0.8 <= time.monotonic() - started < 6
    assert dash.finished[0]["outcome"] == "cancelled" and dash.finished[0]["exit_code"] == -signal.SIGKILL


def test_the_maximum_run_time_is_enforced(dash, tmp_path):
    started = time.monotonic()
    result = run(dash, job_spec(py("import time; time.sleep(300)"), max_runtime_s=1), tmp_path)
    assert time.monotonic() - started < 6
    assert result.outcome == "timeout"
    assert "maximum run time of 1 s" in dash.finished[0]["message"]


def test_preemption_gives_the_job_a_grace_period_to_checkpoint(dash, tmp_path):
    code = """
        import signal, sys, time
        def checkpoint(*_):
            print("saved checkpoint", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, checkpoint)
        print("training", flush=True)
        time.sleep(300)
    """
    worker = threading.Thread(target=run, args=(dash, job_spec(py(code)), tmp_path))
    worker.start()
    assert wait_until(lambda: "training" in dash.text())
    dash.preempt = True
    worker.join(15)
    assert dash.finished[0]["outcome"] == "preempted" and dash.finished[0]["exit_code"] == 0
    assert "saved checkpoint" in dash.text()


def test_a_409_while_running_stops_the_job_without_reporting(dash, tmp_path):
    worker = threading.Thread(
        target=run, args=(dash, job_spec(py("print('up', flush=True); import time; time.sleep(300)")), tmp_path)
    )
    worker.start()
    assert wait_until(lambda: "up" in dash.text())
    dash.stale = True
    worker.join(15)
    assert not worker.is_alive()
    assert dash.finished == []


def test_a_refused_job_is_finished_as_refused_and_nothing_runs(dash, tmp_path):
    marker = tmp_path / "ran"
    result = run(dash, job_spec(["touch", str(marker)]), tmp_path, Policy())
    assert result.outcome == "refused"
    assert dash.actions() == ["finish"], "nothing of a refused job runs"
    assert dash.finished[0]["outcome"] == "refused"
    assert dash.finished[0]["message"].startswith("refused by this host's policy: `touch")
    assert not marker.exists()


def test_shell_strings_run_only_where_allowed(dash, tmp_path):
    assert run(dash, job_spec(shell="echo $((6 * 7))"), tmp_path).outcome == "succeeded"
    assert dash.text("stdout") == "42\n"
    assert run(dash, job_spec(shell="echo hi"), tmp_path, Policy()).outcome == "refused"


def test_transient_server_errors_are_retried(dash, tmp_path):
    dash.fail_next = 3
    result = run(dash, job_spec(py("print('ok')")), tmp_path)
    assert result.outcome == "succeeded" and result.delivered
    assert dash.finished[0]["outcome"] == "succeeded" and dash.text() == "ok\n"


def test_the_built_in_workload_runs_with_this_interpreter(dash, tmp_path):
    spec = job_spec(["python3", "-m", "hwprobe.workloads", "train", "--seconds", "1.5"])
    result = run(dash, spec, tmp_path, Policy())
    assert result.outcome == "succeeded", dash.text()
    assert "HWPROBE_PROGRESS kind=train" in dash.text("stdout")
    assert (tmp_path / "jobs" / "7" / "mingru.npz").exists()


def test_a_job_dies_with_its_worker(dash, tmp_path):
    """The worker process is SIGKILLed: the job's whole group goes within the grace period."""
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, time; c = subprocess.Popen(['sleep', '300']); "
        f"open({str(pids)!r}, 'w').write(str(c.pid)); time.sleep(300)"
    )
    script = textwrap.dedent(f"""
        from pathlib import Path
        from hwprobe.executor import ServerApi, run_job
        from hwprobe.policy import Policy, Rule
        policy = Policy(rules=[Rule("py", ({PY!r}, "-c", "**"))])
        spec = {json.dumps(job_spec([PY, "-c", code], grace_s=1))}
        run_job(ServerApi({dash.url!r}, "tok"), 7, 1, spec, policy, heartbeat_s=0.2, jobs_dir=Path({str(tmp_path)!r}))
    """).replace(": null", ": None")
    worker = subprocess.Popen([PY, "-c", script], cwd=Path(__file__).resolve().parents[2])
    try:
        assert wait_until(lambda: pids.exists() and pids.read_text().strip().isdigit() and dash.beats, 15)
        pgid, grandchild = dash.beats[0]["pgid"], int(pids.read_text())
        assert group_members(pgid)
        worker.kill()
        worker.wait(5)
        assert wait_until(lambda: not group_members(pgid), 5), f"left behind: {group_members(pgid)}"
        assert not alive(grandchild)
    finally:
        if worker.poll() is None:
            worker.kill()


def test_the_log_shipper_numbers_chunks_in_the_spool_and_notes_dropped_output():
    spool = JobSpool()
    shipper = LogShipper(spool, 7, 1, flush_s=0.05, chunk_chars=8, max_pending_chars=20)
    shipper.write("stdout", "0123456789")
    shipper.write("stderr", "abc")
    shipper.write("stdout", "this is too much")  # over max_pending_chars while nothing is sent
    shipper.close()
    batch = spool.next_batch()
    assert batch is not None and batch.kind == "log" and (batch.job, batch.attempt) == (7, 1)
    chunks = batch.bodies
    assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert "".join(c["text"] for c in chunks if c["stream"] == "stdout") == "0123456789"
    assert [c["text"] for c in chunks if c["stream"] == "stderr"] == [
        "abc",
        "[hwprobe: 16 characters of output were dropped while the server was unreachable]\n",
    ]


def test_a_job_keeps_running_while_the_server_is_away_and_its_reports_arrive_in_order_after(dash, tmp_path):
    code = "import time\nfor i in range(12):\n    print('line', i, flush=True); time.sleep(0.1)"
    dash.down = True
    worker = threading.Thread(target=run, args=(dash, job_spec(py(code)), tmp_path))
    worker.start()
    time.sleep(2.0)  # the job ends meanwhile; its log, heartbeat and finish wait in the spool
    assert dash.chunks == {} and dash.finished == []
    dash.down = False
    worker.join(15)
    assert dash.finished and dash.finished[0]["outcome"] == "succeeded"
    assert dash.text("stdout") == "".join(f"line {i}\n" for i in range(12))
    sent = [a for a in dash.accepted if a in ("log", "finish")]
    assert sent[-1] == "finish" and set(sent[:-1]) == {"log"}, "the finish goes after the whole log"
    assert dash.beats, "the heartbeat kept while the server was away is delivered"


def test_a_planted_hwprobe_in_the_workdir_does_not_run_instead_of_the_built_in_workload(dash, tmp_path):
    workdir = tmp_path / "work"
    marker = tmp_path / "planted-code-ran"
    planted = workdir / "hwprobe"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("")
    (planted / "workloads.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    # The attack works on a plain `python -m` from that folder: the working directory comes first.
    subprocess.run([PY, "-m", "hwprobe.workloads", "train", "--seconds", "0"], cwd=workdir, capture_output=True)
    assert marker.exists(), "the planted module shadows the real one for a plain python -m"
    marker.unlink()
    spec = job_spec(["python", "-m", "hwprobe.workloads", "train", "--seconds", "1"], workdir=str(workdir))
    result = run(dash, spec, tmp_path, Policy())
    assert result.outcome == "succeeded", dash.text()
    assert "HWPROBE_PROGRESS kind=train" in dash.text("stdout")
    assert not marker.exists(), "the job ran the planted hwprobe/workloads.py"


def test_a_job_given_a_gpu_by_uuid_sees_exactly_that_gpu(dash, tmp_path):
    from hwprobe.workloads.mingru import torch_cuda

    if not torch_cuda():
        pytest.skip("needs PyTorch and a visible CUDA GPU")
    uuid = subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    code = "import torch; print(torch.cuda.device_count())"
    policy = Policy(rules=ALLOW_PY.rules, pass_env=("LD_LIBRARY_PATH",))
    run(dash, job_spec(py(code), gpus=[0], gpu_uuids=[uuid]), tmp_path, policy)
    assert dash.text("stdout") == "1\n", dash.text()
    dash.chunks.clear()
    run(dash, job_spec(py(code)), tmp_path, policy)
    assert dash.text("stdout") == "0\n", dash.text()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_job_runs_as_the_user_the_host_names(dash, tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    policy = Policy(rules=[Rule("whoami", ("/usr/bin/id", "-u"))], run_as="nobody")
    result = run(dash, job_spec(["/usr/bin/id", "-u"], workdir="/"), tmp_path, policy)
    assert result.outcome == "succeeded", (dash.finished, dash.text())
    assert dash.text("stdout").strip() == str(nobody.pw_uid)
    missing = Policy(rules=[Rule("whoami", ("/usr/bin/id", "-u"))], run_as="no-such-user-here")
    assert run(dash, job_spec(["/usr/bin/id", "-u"], workdir="/"), tmp_path, missing).outcome == "failed"


def test_nul_bytes_in_a_jobs_output_reach_the_log_as_replacement_characters():
    # The server refuses text holding a NUL (PostgreSQL cannot store it): the worker must not send one.
    import io

    from hwprobe.executor import _pump

    spool = JobSpool()
    shipper = LogShipper(spool, 7, 1, flush_s=0.05)
    _pump(io.BytesIO(b"a\x00b\n"), "stdout", shipper)
    shipper.close()
    batch = spool.next_batch()
    assert batch is not None and "".join(c["text"] for c in batch.bodies) == "a\ufffdb\n"


# ---- a job's own report socket (hwprobe/relay.py) ------------------------------------------------

REPORTING_JOB = """
import os, stat, sys
sys.path.insert(0, {home!r})
from hwprobe import report
path = os.environ["HWPROBE_REPORT_SOCKET"]
folder = os.path.dirname(path)
print("socket", path, oct(stat.S_IMODE(os.stat(path).st_mode)), os.stat(path).st_uid)
print("folder", oct(stat.S_IMODE(os.stat(folder).st_mode)), os.stat(folder).st_uid, "uid", os.getuid())
report.tokens(1000, seconds=0.5)
report.tokens(24, job=999)  # another job's id
report.flush()
report.tokens(100, seconds=0.1)  # left for the exit: it sits in the socket when the job is gone
"""


class AgentSide:
    """The agent's Unix socket; its flush takes what the ledger holds, as the agent's window does."""

    def __init__(self, path: Path) -> None:
        from hwprobe import channel

        self.ledger = channel.Ledger()
        self.at_flush: list[dict[str, Any]] = []
        self.scrapes: list[dict[str, Any]] = []
        self.channel = channel.Channel(self.ledger, on_scrape=self.scrapes.append, on_flush=self._flush)
        self.listener = channel.SocketListener(path, self.channel).start()
        self.path = path

    def _flush(self, _timeout_s: float) -> bool:
        self.at_flush.extend(self.ledger.drain())
        return True

    def totals(self, entries: list[dict[str, Any]]) -> dict[tuple[Any, str], int]:
        out: dict[tuple[Any, str], int] = {}
        for e in entries:
            key = (e["job_id"], e["source"])
            out[key] = out.get(key, 0) + e["train"]
        return out


@pytest.fixture
def agent_socket(tmp_path, monkeypatch):
    from hwprobe import channel

    side = AgentSide(tmp_path / "agent" / "report.sock")
    monkeypatch.setenv(channel.SOCKET_ENV, str(side.path))
    yield side
    side.listener.close()


def reported(dash: FakeDashboard) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in dash.text("stdout").splitlines()}


def test_a_job_forced_through_its_own_socket_reports_as_itself_and_its_last_report_comes_before_its_end(
    dash, tmp_path, agent_socket
):
    """The relay path of a job the host runs as another user, taken here by a job run as this
    user (``relay=True``): the test needs no second user. Its socket is not the agent's, a report
    naming another job counts as this job's, and the report the job left at exit reached the
    agent before the worker's flush, which comes before the finish."""
    code = REPORTING_JOB.format(home=str(Path(__file__).resolve().parents[2]))
    result = run(dash, job_spec(py(code)), tmp_path, relay=True, report_port=0)
    assert result.outcome == "succeeded", dash.text()
    said = reported(dash)
    path, mode, _ = said["socket"]
    assert path != str(agent_socket.path) and mode == "0o600" and said["folder"][0] == "0o700"
    assert agent_socket.totals(agent_socket.at_flush) == {(7, "report"): 1124}
    assert not Path(path).parent.exists()  # the socket and its folder are gone with the job
    assert agent_socket.channel.malformed == 0


def test_a_job_of_the_workers_own_user_talks_to_the_agents_socket_directly(agent_socket):
    from hwprobe.executor import JobRun

    run_ = JobRun(ServerApi("http://127.0.0.1:9", "tok"), 7, 1, job_spec(["x"]), ALLOW_PY)
    assert run_.open_relay(None) is None and run_.relay is None
    assert run_.environment(None)["HWPROBE_REPORT_SOCKET"] == str(agent_socket.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_job_run_as_another_user_reports_through_a_socket_only_that_user_can_reach(dash, tmp_path, agent_socket):
    import pwd

    nobody = pwd.getpwnam("nobody")
    code = REPORTING_JOB.format(home=str(Path(__file__).resolve().parents[2]))
    policy = Policy(rules=ALLOW_PY.rules, run_as="nobody")
    result = run(dash, job_spec(py(code), workdir="/"), tmp_path, policy, report_port=0)
    assert result.outcome == "succeeded", dash.text()
    said = reported(dash)
    assert said["socket"][1:] == ["0o600", str(nobody.pw_uid)]
    assert said["folder"] == ["0o700", str(nobody.pw_uid), "uid", str(nobody.pw_uid)]
    assert agent_socket.totals(agent_socket.at_flush) == {(7, "report"): 1124}
    assert not Path(said["socket"][0]).parent.exists()


def test_the_relay_passes_on_what_the_agent_must_count_as_dropped_and_registrations_as_the_jobs(agent_socket):
    from hwprobe import channel
    from hwprobe.relay import JobRelay

    relay = JobRelay(7, str(agent_socket.path), port=0)
    client = channel.SocketClient(relay.path)
    assert client.send(
        channel.token_datagram(3, "report", train=10),
        b"not json",
        channel.scrape_datagram("http://127.0.0.1:1/metrics", 3, "vllm"),
    )
    assert client.flush()  # answered through the agent's own flush
    client.close()
    assert relay.close() is False  # nothing flushed twice
    assert agent_socket.totals(agent_socket.at_flush) == {(7, "report"): 10}
    assert agent_socket.channel.malformed == 1  # counted where the machine page shows it
    assert [m["job"] for m in agent_socket.scrapes] == [7]
    assert relay.channel.rewritten == 2 and not relay.folder.exists()


def test_draining_a_socket_reads_what_senders_wrote_before_they_went(tmp_path):
    """What a relay does when its job has ended: the messages are still in the kernel, unread."""
    from hwprobe import channel

    ledger = channel.Ledger()
    listener = channel.SocketListener(tmp_path / "job.sock", channel.Channel(ledger))  # not started: nothing reads
    for n in (1, 2, 3):
        sender = channel.SocketClient(listener.path)
        assert sender.send(channel.token_datagram(7, "report", train=n))
        sender.close()
    listener.drain(timeout_s=2)
    listener.close()
    assert sum(e["train"] for e in ledger.drain()) == 6
