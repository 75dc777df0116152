"""Runs one job on this machine: policy, spawn, stream the log, heartbeat, stop, finish.

``hwprobe.worker`` takes the job from the server (``POST /api/v1/agent/jobs/next`` hands it over
already ``running``) and calls :func:`run_job` in a thread of its own; tests drive it directly
against a local HTTP server. The server's side is in ``docs/design.md`` (Jobs): every call names
the attempt, and a 409 on a heartbeat means "this attempt is no longer yours: stop".

The order of events:

1. the host's policy (:mod:`hwprobe.policy`) is checked first; a refused job is finished with
   outcome ``refused`` and nothing runs;
2. the command starts in a new session (its own process group), through a small supervisor
   (``SHIM``) that is the group leader: it waits for the command, and if the worker dies it
   stops the whole group (SIGTERM, ``grace_s``, SIGKILL), so a job never outlives its worker;
3. stdout and stderr are read as they come and kept in numbered chunks (about every second, or
   as soon as 16 KiB are waiting) in the worker's spool (:mod:`hwprobe.jobspool`), whose outbox
   sends them to ``/log``; a heartbeat every 5 s reports pid/pgid and brings back ``cancel`` /
   ``preempt``. While the server is away the job keeps running: its log, its latest heartbeat
   and its finish wait in the spool and go, in order, once the server answers again;
4. cancel, preemption, the maximum run time and a 409 send SIGTERM to the group, then SIGKILL
   after ``grace_s``; when the command ends, whatever is left of its group is killed;
5. meanwhile each output line is read for tokens (:mod:`hwprobe.progress`) and the counts go to
   the local agent (its Unix socket, else UDP); a job's Prometheus endpoint (``metrics_url``, or
   the port the built-in ``serve`` prints) is scraped for the job's lifetime. The job itself
   reports (:mod:`hwprobe.report`) to the agent's socket, or, when it runs as another user, to
   a socket of its own that the worker relays under the job's id (:mod:`hwprobe.relay`), drained
   when the job ends;
6. ``finish`` reports ``succeeded`` (exit 0), ``failed`` (any other exit; ``exit_code`` is
   negative for a signal, as in Python), ``cancelled``, ``timeout`` or ``preempted``.

Transient HTTP failures (no answer, 5xx, 408, 429) are retried with backoff; other 4xx are not.
Built-in workloads run this installation's code in Python's isolated mode, whatever the job's
working directory holds (``python -m`` would import a ``hwprobe`` package found there first).
"""

from __future__ import annotations

import codecs
import fnmatch
import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from hwprobe import channel, http_client
from hwprobe.client import OK, RETRY, Backoff, Reply, classify
from hwprobe.jobspool import FINISH, HEARTBEAT, LOG, Batch, JobSpool, Outbox
from hwprobe.policy import Policy, is_builtin
from hwprobe.progress import JobMeter
from hwprobe.relay import JobRelay
from hwprobe.spool import state_dir

log = logging.getLogger("hwprobe.worker")

HEARTBEAT_S = 5.0
FLUSH_S = 1.0
CHUNK_CHARS = 16 * 1024  # also the size that triggers an early flush
MAX_PENDING_CHARS = 16 * 1024 * 1024  # output kept on disk per attempt while the server is unreachable
REPORT_WAIT_S = 30.0  # a lone run_job waits this long for its finish to be delivered

# The built-in workloads run as `python -I -c BOOT <hwprobe's folder> train|serve ...`: isolated
# mode ignores PYTHON* variables, the user's site and the working directory, and the folder this
# hwprobe was loaded from goes first on the path, so a planted hwprobe/ in the workdir never runs.
BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); from hwprobe.workloads.__main__ import main; sys.exit(main())"
HWPROBE_HOME = str(Path(__file__).resolve().parent.parent)

# The group leader of every job. It runs with -I -S (no site, no PYTHON* variables) and only
# the standard library. SIGTERM/SIGINT get a no-op handler rather than SIG_IGN so that the
# command, which inherits dispositions across exec, still receives them normally.
SHIM = r"""
import os, signal, subprocess, sys, time
parent, grace, ids, argv = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda *_: None)
user = {}
if ids != "-":  # uid:gid:groups -- the command runs as that user, this supervisor stays as it is
    uid, gid, groups = ids.split(":")
    user = {"user": int(uid), "group": int(gid), "extra_groups": [int(g) for g in groups.split(",") if g]}
try:
    child = subprocess.Popen(argv, **user)
except OSError as err:
    print(f"hwprobe: cannot start {argv[0]!r}: {err.strerror or err}", file=sys.stderr, flush=True)
    sys.exit(127)
while True:
    try:
        child.wait(timeout=0.25)
        break
    except subprocess.TimeoutExpired:
        pass
    if os.getppid() != parent:  # the worker died: take the whole group down with it
        os.killpg(0, signal.SIGTERM)
        end = time.monotonic() + grace
        while child.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        os.killpg(0, signal.SIGKILL)
code = child.returncode
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    sys.exit(128 - code)
sys.exit(code)
"""


# ---- HTTP ---------------------------------------------------------------------------------


class ApiError(Exception):
    """The server refused a call (4xx), or gave no usable answer before the retries ran out."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status or 'no answer'}: {message}")
        self.status = status


class StaleAttempt(ApiError):
    """409: this attempt is no longer this worker's (redelivered, cancelled, lost, requeued)."""


def request_json(
    base: str, method: str, path: str, token: str, body: dict[str, Any] | None = None, timeout_s: float = 10.0
) -> Reply:
    """One JSON request with a bearer token; never raises for network trouble (status None)."""
    response = http_client.send_json(method, base.rstrip("/") + path, body, token, timeout_s)
    return Reply(response.status, response.json(), response.error)


class ServerApi:
    """The worker's calls to the dashboard, with retries on transient failures."""

    def __init__(
        self,
        server: str,
        token: str,
        timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server must be an http(s) URL, not {server!r}")
        self.server, self._token, self.timeout_s = server.rstrip("/"), token, timeout_s
        self._base, self._cap, self._sleep = backoff_base_s, backoff_cap_s, sleep

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        retry_for_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """The JSON answer; raises StaleAttempt on 409 and ApiError on other failures."""
        backoff = Backoff(self._base, self._cap)
        deadline = time.monotonic() + retry_for_s
        while True:
            reply = request_json(self.server, method, path, self._token, body, timeout_s or self.timeout_s)
            kind = classify(reply.status)
            if kind == OK:
                return reply.body or {}
            if reply.status == 409:
                raise StaleAttempt(409, reply.error or "conflict")
            left = deadline - time.monotonic()
            if kind != RETRY or left <= 0:
                raise ApiError(reply.status, reply.error or "no answer")
            self._sleep(min(left, max(0.05, backoff.next_delay())))

    def config(self, retry_for_s: float = 60.0) -> dict[str, Any]:
        return self.call("GET", "/api/v1/agent/config", retry_for_s=retry_for_s)

    def report_policy(self, summary: dict[str, Any], retry_for_s: float = 10.0) -> None:
        """Tell the dashboard what this host allows (``Policy.summary()``), for its submit form."""
        self.call("POST", "/api/v1/agent/policy", summary, retry_for_s=retry_for_s)

    def next_job(self, worker_id: str, held: list[tuple[int, int]], wait_s: float) -> dict[str, Any] | None:
        """Long-poll for the next job placed on this machine: ``{"job_id", "attempt", "spec"}``, or
        None when none came within ``wait_s``. The server takes it (``running``) before answering."""
        body = {"worker": worker_id, "held": [{"job": j, "attempt": a} for j, a in held], "wait_s": wait_s}
        answer = self.call("POST", "/api/v1/agent/jobs/next", body, retry_for_s=0, timeout_s=wait_s + 15)
        return answer if answer.get("job_id") else None

    def heartbeat(self, job_id: int, attempt: int, pid: int, pgid: int) -> dict[str, Any]:
        # No retry: the next heartbeat is the retry, and the loop must keep watching the job.
        return self.call(
            "POST",
            f"/api/v1/agent/jobs/{job_id}/heartbeat",
            {"attempt": attempt, "pid": pid, "pgid": pgid},
            retry_for_s=0,
            timeout_s=5,
        )

    def log(self, job_id: int, attempt: int, chunks: list[dict[str, Any]], retry_for_s: float = 0) -> None:
        self.call("POST", f"/api/v1/agent/jobs/{job_id}/log", {"attempt": attempt, "chunks": chunks}, retry_for_s)

    def finish(
        self, job_id: int, attempt: int, outcome: str, exit_code: int | None, message: str, retry_for_s: float = 0
    ) -> None:
        body = {"attempt": attempt, "outcome": outcome, "exit_code": exit_code, "message": message[:2000]}
        self.call("POST", f"/api/v1/agent/jobs/{job_id}/finish", body, retry_for_s)

    def deliver(self, batch: Batch) -> None:
        """Send one batch of spooled reports (:class:`hwprobe.jobspool.Outbox` retries it)."""
        if batch.kind == LOG:
            self.log(batch.job, batch.attempt, batch.bodies)
        elif batch.kind == HEARTBEAT:
            self.call("POST", f"/api/v1/agent/jobs/{batch.job}/heartbeat", batch.bodies[0], retry_for_s=0)
        elif batch.kind == FINISH:
            self.call("POST", f"/api/v1/agent/jobs/{batch.job}/finish", batch.bodies[0], retry_for_s=0)


# ---- the log --------------------------------------------------------------------------------


class LogShipper:
    """Collects a job's output as it comes and files it in seq-numbered chunks into the spool.

    A chunk is sealed about every ``flush_s`` seconds, or as soon as ``chunk_chars`` are waiting;
    the outbox sends it (a resent chunk keeps its seq, so it is stored once). At most
    ``max_pending_chars`` of the attempt's log wait in the spool; beyond that, output is counted
    as dropped and a note saying so goes into the log once there is room again.
    """

    def __init__(
        self,
        spool: JobSpool,
        job_id: int,
        attempt: int,
        wake: Callable[[], None] = lambda: None,
        flush_s: float = FLUSH_S,
        chunk_chars: int = CHUNK_CHARS,
        max_pending_chars: int = MAX_PENDING_CHARS,
    ) -> None:
        self._spool, self._job, self._attempt, self._wake = spool, job_id, attempt, wake
        self.flush_s, self.chunk_chars, self.max_pending_chars = flush_s, chunk_chars, max_pending_chars
        self._cond = threading.Condition()
        self._open: list[Any] | None = None  # [stream, text, ts] being filled
        self._seq = 0
        self._dropped = 0
        self._closing = False
        self.chunks = 0
        self._thread = threading.Thread(target=self._run, name="hwprobe-log", daemon=True)
        self._thread.start()

    def write(self, stream: str, text: str) -> None:
        """Take ``text`` of ``stream`` ("stdout" or "stderr")."""
        if not text:
            return
        with self._cond:
            if self._open is not None and self._open[0] != stream:
                self._seal()
            if self._open is None:
                self._open = [stream, "", time.time()]
            self._open[1] += text
            while self._open is not None and len(self._open[1]) >= self.chunk_chars:
                self._seal()

    def _seal(self) -> None:
        """File the open text (at most chunk_chars per chunk; the rest stays open)."""
        if self._open is not None:
            stream, text, ts = self._open
            head, rest = text[: self.chunk_chars], text[self.chunk_chars :]
            self._open = [stream, rest, time.time()] if rest else None
            if self._dropped or self._spool.pending_log_chars(self._job, self._attempt) + len(head) > (
                self.max_pending_chars
            ):
                self._dropped += len(head)
            else:
                self._file(stream, head, ts)
        room = self._dropped and self._open is None
        if room and self._spool.pending_log_chars(self._job, self._attempt) < self.max_pending_chars // 2:
            self._note_dropped()

    def _note_dropped(self) -> None:
        note = f"[hwprobe: {self._dropped} characters of output were dropped while the server was unreachable]\n"
        self._file("stderr", note, time.time())
        self._dropped = 0

    def _file(self, stream: str, text: str, ts: float) -> None:
        self._seq += 1
        self._spool.add_log(self._job, self._attempt, {"seq": self._seq, "stream": stream, "text": text, "ts": ts})
        self.chunks += 1
        self._wake()

    def _run(self) -> None:
        with self._cond:
            while not self._closing:
                self._cond.wait(self.flush_s)
                self._seal()

    def close(self) -> None:
        """File what is left and stop the thread (the outbox sends it, before the finish)."""
        with self._cond:
            self._closing = True
            self._seal()
            self._cond.notify()
        self._thread.join(5)
        with self._cond:
            self._seal()
            if self._dropped:  # a note that was waiting for room goes in regardless now
                self._note_dropped()


def _pump(pipe: IO[bytes], stream: str, shipper: LogShipper, meter: JobMeter | None = None) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    read = getattr(pipe, "read1", pipe.read)
    while True:
        data = read(65536)
        if not data:
            break
        # A NUL cannot be stored as text (PostgreSQL), and the server refuses a log batch holding
        # one: a program's stray NUL bytes become U+FFFD like its invalid UTF-8.
        text = decoder.decode(data).replace("\x00", "\ufffd")
        shipper.write(stream, text)
        if meter is not None:
            _meter(meter.feed, stream, text)
    text = decoder.decode(b"", final=True).replace("\x00", "\ufffd")
    shipper.write(stream, text)
    if meter is not None:
        _meter(meter.feed, stream, text)
        _meter(meter.close, stream)
    pipe.close()


def _meter(call: Callable[..., None], *args: Any) -> None:
    # Counting tokens is a side show: a surprise there must not stop the log.
    try:
        call(*args)
    except Exception:
        log.exception("progress parsing failed; the job's log is unaffected")


# ---- the run --------------------------------------------------------------------------------


@dataclass
class Result:
    """What happened: ``outcome`` as reported to ``finish`` (None: nothing to report, the attempt
    was no longer this worker's), and whether the server has the report yet (else it is spooled)."""

    outcome: str | None
    exit_code: int | None
    message: str
    delivered: bool = False


class SpawnError(Exception):
    """The job could not be started (bad workdir, unknown user...); the message says why."""


def default_jobs_dir(policy: Policy) -> Path:
    if policy.jobs_dir:
        return Path(policy.jobs_dir)
    return state_dir() / "jobs"


def visible_devices(spec: dict[str, Any]) -> str:
    """CUDA_VISIBLE_DEVICES for the job: its GPUs' UUIDs (indexes where a UUID is unknown)."""
    uuids = spec.get("gpu_uuids") or []
    gpus = spec.get("gpus") or []
    if uuids:
        return ",".join(str(u) for u in uuids)
    return ",".join(str(i) for i in gpus)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


class JobRun:
    """One attempt of one job, from spawn to finish. Call :meth:`run` once.

    Reports go through ``spool`` and its ``outbox`` (the worker's, shared by its jobs); without
    them the run keeps its own in memory and waits up to ``report_wait_s`` for its finish to be
    delivered before it returns.
    """

    def __init__(
        self,
        api: ServerApi,
        job_id: int,
        attempt: int,
        spec: dict[str, Any],
        policy: Policy,
        heartbeat_s: float = HEARTBEAT_S,
        flush_s: float = FLUSH_S,
        jobs_dir: Path | None = None,
        poll_s: float = 0.1,
        report_port: int | None = None,
        spool: JobSpool | None = None,
        outbox: Outbox | None = None,
        report_wait_s: float = REPORT_WAIT_S,
        on_spawn: Callable[[int, int, int, float], None] | None = None,
        relay: bool | None = None,
    ) -> None:
        self.api, self.job_id, self.attempt, self.spec, self.policy = api, job_id, attempt, spec, policy
        self.heartbeat_s, self.flush_s, self.poll_s = heartbeat_s, flush_s, poll_s
        self._own_outbox = spool is None or outbox is None
        if spool is None or outbox is None:
            spool = JobSpool(":memory:")
            outbox = Outbox(spool, api.deliver, base_s=0.05, cap_s=1.0).start()
        self.spool, self.outbox, self.report_wait_s = spool, outbox, report_wait_s
        self._beats_failing_since: float | None = None
        self.jobs_dir = jobs_dir or default_jobs_dir(policy)
        self.grace_s = float(spec.get("grace_s") or 10)
        self.reason: str | None = None  # why we are stopping it: cancelled, preempted, timeout, stale
        self._kill_at: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.report_port = channel.port_from_env() if report_port is None else report_port
        self.meter: JobMeter | None = None
        # (job, attempt, pgid, grace_s) of the group just started: the worker's record for cleanups
        self.on_spawn = on_spawn
        # Whether the job reports through a socket of its own (None: when it runs as another user)
        self.use_relay = relay
        self.relay: JobRelay | None = None

    # -- preparing ----------------------------------------------------------------------------

    def _user(self) -> pwd.struct_passwd | None:
        name = self.policy.run_as
        if not name:
            return None
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            raise SpawnError(f"run_as user {name!r} does not exist on this host") from None
        return None if user.pw_uid == os.getuid() else user

    def command(self) -> list[str]:
        if self.spec.get("shell"):
            return ["/bin/sh", "-c", self.spec["shell"]]
        argv = list(self.spec["argv"])
        if is_builtin(argv):
            # This interpreter (it has hwprobe's dependencies) and this hwprobe, never the workdir's.
            return [sys.executable, "-I", "-c", BOOT, HWPROBE_HOME, *argv[3:]]
        return argv

    def environment(self, user: pwd.struct_passwd | None, relay_path: str | None = None) -> dict[str, str]:
        """A clean environment: a few basics, pass_env, the job's own, then ours (not overridable);
        ``relay_path``: the job's own report socket (:meth:`open_relay`)."""
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ") if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        if user is not None:
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        else:
            me = pwd.getpwuid(os.getuid())
            env.update(HOME=os.environ.get("HOME") or me.pw_dir, USER=me.pw_name, LOGNAME=me.pw_name)
        for name, value in os.environ.items():
            if any(fnmatch.fnmatchcase(name, pat) for pat in self.policy.pass_env):
                env[name] = value
        env["PYTHONUNBUFFERED"] = "1"  # live logs from Python programs
        env.update({str(k): str(v) for k, v in (self.spec.get("env") or {}).items()})
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(self.spec)
        env["HWPROBE_JOB_ID"] = str(self.job_id)
        env["HWPROBE_JOB_ATTEMPT"] = str(self.attempt)
        env["HWPROBE_REPORT_PORT"] = str(self.report_port)  # where hwprobe.report finds the agent
        socket_path = channel.socket_from_env()
        if relay_path:
            env[channel.SOCKET_ENV] = relay_path
        else:
            # The agent's socket is 0600: a job run as another user without a relay has UDP only.
            env[channel.SOCKET_ENV] = socket_path if (socket_path and user is None) else ""
        return env

    def open_relay(self, user: pwd.struct_passwd | None) -> str | None:
        """Open the job's own report socket when it needs one (it runs as another user, or the
        run was asked for one); its path, or None (no agent socket to relay to, or it failed)."""
        wanted = user is not None if self.use_relay is None else self.use_relay
        agent_socket = channel.socket_from_env()
        if not wanted or agent_socket is None:
            return None
        try:
            self.relay = JobRelay(
                self.job_id,
                agent_socket,
                self.report_port,
                uid=user.pw_uid if user is not None else None,
                gid=user.pw_gid if user is not None else None,
            )
        except OSError as err:
            log.warning("job %s: no report socket of its own (%s); it has UDP only", self.job_id, err)
            return None
        return self.relay.path

    def close_relay(self, flush: bool | None = None) -> None:
        """Relay what the job wrote last and remove its socket; then the meter's flush has the
        agent deliver it (``flush`` None: the relay flushes the agent itself if there is no meter)."""
        if self.relay is not None:
            self.relay.close(flush=self.meter is None if flush is None else flush)
            self.relay = None

    def workdir(self, user: pwd.struct_passwd | None) -> Path:
        if self.spec.get("workdir"):
            path = Path(self.spec["workdir"])
            if not path.is_dir():
                raise SpawnError(f"workdir {path} does not exist on this host")
            return path
        path = self.jobs_dir / str(self.job_id)
        path.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
        return path

    def spawn(self) -> subprocess.Popen[bytes]:
        user = self._user()
        argv = self.command()
        cwd = self.workdir(user)
        ids = "-"
        if user is not None:
            if os.geteuid() != 0:
                raise SpawnError(f"cannot run as {user.pw_name}: the worker is not running as root")
            # The supervisor keeps the worker's user (the job's user may not be able to run this
            # interpreter) and starts the command itself as the host's run_as user.
            groups = ",".join(str(g) for g in os.getgrouplist(user.pw_name, user.pw_gid))
            ids = f"{user.pw_uid}:{user.pw_gid}:{groups}"
        shim = [sys.executable, "-I", "-S", "-c", SHIM, str(os.getpid()), str(self.grace_s), ids, *argv]
        relay_path = self.open_relay(user)
        try:
            return subprocess.Popen(
                shim,
                cwd=cwd,
                env=self.environment(user, relay_path),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as err:
            self.close_relay(flush=False)
            raise SpawnError(f"cannot start the job: {err}") from err

    # -- running ------------------------------------------------------------------------------

    def finish(self, outcome: str, exit_code: int | None, message: str) -> Result:
        """Spool the attempt's end behind its log; ``delivered`` says whether the server has it yet."""
        body = {"attempt": self.attempt, "outcome": outcome, "exit_code": exit_code, "message": message[:2000]}
        self.spool.add_finish(self.job_id, self.attempt, body)
        self.outbox.wake()
        delivered = self.report_wait_s > 0 and self.outbox.wait_sent(self.job_id, self.attempt, self.report_wait_s)
        if self._own_outbox:
            self.outbox.stop(0)
        if not delivered and self.report_wait_s > 0:
            log.warning(
                "job %s attempt %s: %s kept on disk until the server answers", self.job_id, self.attempt, outcome
            )
        return Result(outcome, exit_code, message, delivered)

    def run(self) -> Result:
        if self.reason == "shutdown":  # the worker is stopping before the job started: back to the queue
            return self.finish("preempted", None, "handed back: the worker was stopping before it started")
        reason = self.policy.check(self.spec)
        if reason:
            log.warning("job %s refused: %s", self.job_id, reason)
            return self.finish("refused", None, f"refused by this host's policy: {reason}")
        try:
            self.proc = self.spawn()
        except (SpawnError, OSError) as err:
            return self.finish("failed", None, str(err))
        if self.on_spawn is not None:
            self.on_spawn(self.job_id, self.attempt, self.proc.pid, self.grace_s)
        log.info("job %s attempt %s started: pid %s", self.job_id, self.attempt, self.proc.pid)
        self.meter = self._make_meter()
        shipper = LogShipper(self.spool, self.job_id, self.attempt, self.outbox.wake, self.flush_s)
        readers = [
            threading.Thread(target=_pump, args=(pipe, name, shipper, self.meter), daemon=True)
            for pipe, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))
        ]
        for r in readers:
            r.start()
        try:
            code = self._watch()
            self._signal(signal.SIGKILL)  # whatever the command left running in its group
            for r in readers:
                r.join(10)
        finally:
            self.close_relay()  # the job's own last reports go to the agent before the meter's flush
        if self.meter is not None:  # the job's last tokens reach the server before its end does
            _meter(self.meter.finish)
        shipper.close()
        return self._report(code)

    def _make_meter(self) -> JobMeter | None:
        """The job's token counting (None when the agent's channel is off or the pattern is bad)."""
        if not self.report_port and channel.socket_from_env() is None:
            return None
        argv = self.spec.get("argv")
        try:
            meter = JobMeter(
                self.job_id,
                self.spec.get("progress_pattern"),
                self.spec.get("metrics_url"),
                builtin_serve=is_builtin(argv) and "serve" in (argv or []),
                port=self.report_port,
            )
        except ValueError as err:  # the server validates patterns; an older one may not have
            log.warning("job %s: progress_pattern ignored: %s", self.job_id, err)
            return None
        meter.start()
        return meter

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone

    def stop(self, reason: str) -> None:
        """Ask the group to stop (SIGTERM now, SIGKILL after grace_s); the first reason wins."""
        if self.reason is None:
            log.info("job %s attempt %s: stopping (%s)", self.job_id, self.attempt, reason)
            self.reason = reason
            if self.meter is not None:  # its engine's counters, while the engine still answers
                _meter(self.meter.stopping)
            self._signal(signal.SIGTERM)
            self._kill_at = time.monotonic() + self.grace_s

    def _watch(self) -> int:
        assert self.proc is not None
        started = time.monotonic()
        limit = self.spec.get("max_runtime_s")
        next_beat = started
        while True:
            code = self.proc.poll()
            if code is not None:
                return code
            now = time.monotonic()
            if limit and now - started >= limit:
                self.stop("timeout")
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                self._beat()
            if self._kill_at is not None and now >= self._kill_at:
                self._signal(signal.SIGKILL)
                self._kill_at = None
            time.sleep(self.poll_s)

    def _beat(self) -> None:
        assert self.proc is not None
        try:
            answer = self.api.heartbeat(self.job_id, self.attempt, self.proc.pid, self.proc.pid)
        except StaleAttempt:
            self.stop("stale")
            return
        except ApiError as err:
            if classify(err.status) != RETRY:
                log.warning("job %s: heartbeat refused (%s)", self.job_id, err)
                return
            # The server is away: the job runs on, and the server learns it was alive when it is back.
            body = {"attempt": self.attempt, "pid": self.proc.pid, "pgid": self.proc.pid, "ts": time.time()}
            self.spool.set_heartbeat(self.job_id, self.attempt, body)
            if self._beats_failing_since is None:
                self._beats_failing_since = time.monotonic()
                log.warning("job %s: heartbeat failed (%s); the job keeps running", self.job_id, err)
            return
        if self._beats_failing_since is not None:
            log.info(
                "job %s: heartbeats get through again after %.0f s",
                self.job_id,
                time.monotonic() - self._beats_failing_since,
            )
            self._beats_failing_since = None
            self.spool.clear_heartbeat(self.job_id, self.attempt)
        if answer.get("cancel"):
            self.stop("cancelled")
        elif answer.get("preempt"):
            self.stop("preempted")

    def _report(self, code: int) -> Result:
        if self.reason == "stale":
            message = f"attempt {self.attempt} is no longer current on the server; stopped it ({describe_exit(code)})"
            log.warning("job %s: %s", self.job_id, message)
            if self._own_outbox:
                self.outbox.stop(self.report_wait_s)  # its log still goes: the server takes it
            return Result(None, code, message)
        if self.reason == "shutdown":
            # The worker is being stopped: a preemptible job goes back to the queue and resumes.
            if self.spec.get("preemptible"):
                return self.finish("preempted", code, f"the worker on this host was stopped; {describe_exit(code)}")
            return self.finish(
                "failed", code, f"stopped: the worker on this host was shut down ({describe_exit(code)})"
            )
        if self.reason == "cancelled":
            return self.finish("cancelled", code, f"cancelled on request; {describe_exit(code)}")
        if self.reason == "timeout":
            return self.finish(
                "timeout",
                code,
                f"timed out: stopped after the maximum run time of "
                f"{self.spec.get('max_runtime_s')} s ({describe_exit(code)})",
            )
        if self.reason == "preempted":
            return self.finish("preempted", code, f"preempted; {describe_exit(code)}")
        if code == 0:
            return self.finish("succeeded", 0, "exited with code 0")
        return self.finish("failed", code, describe_exit(code))


def run_job(api: ServerApi, job_id: int, attempt: int, spec: dict[str, Any], policy: Policy, **options: Any) -> Result:
    """Run one attempt of one job to its end and report it; see the module docstring."""
    return JobRun(api, job_id, attempt, spec, policy, **options).run()
