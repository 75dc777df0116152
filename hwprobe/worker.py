"""``python -m hwprobe worker``: runs this machine's dashboard jobs, taken over HTTPS.

No broker and no Celery here: the worker asks the dashboard for work with its agent token, on a
long-poll (``POST /api/v1/agent/jobs/next``) that answers as soon as a job is placed on this
machine, with the job already taken for this worker (``running``), or with 204 after about 25 s.
Each job runs in a thread of its own (:mod:`hwprobe.executor`), at most ``--concurrency`` at once;
the worker asks only while it has a free slot.

What the worker owes the dashboard (each job's log, its latest heartbeat, its finish) goes
through an on-disk spool (:mod:`hwprobe.jobspool`), so a dashboard that is away (a restart, an
outage) costs nothing: the jobs run on, and the reports go, in order, once it answers again. The
spool also keeps the worker's id and the attempts it took; each poll names the attempts it still
holds, so after a restart of the worker (its jobs die with it) the dashboard ends the ones it
took before as ``lost`` at once.

At start, and whenever the host's policy file changes (re-read before each job and every 30 s),
the worker sends the policy to the dashboard (``POST /api/v1/agent/policy``) for its submit form;
the file (``--config``, see :mod:`hwprobe.policy`) is read again before every job, so editing it
needs no restart. SIGTERM or SIGINT stop it: no new work is taken, running jobs are stopped
(SIGTERM, their grace period, SIGKILL) and reported (a preemptible one goes back to the queue),
and what is left in the spool is sent for up to 10 s (the rest waits for the next start).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hwprobe import cleanup, executor, policy
from hwprobe.client import AUTH, RETRY, Backoff, classify, token_from
from hwprobe.jobspool import JobSpool, Outbox
from hwprobe.spool import state_dir as default_state_dir

log = logging.getLogger("hwprobe.worker")

POLICY_CHECK_S = 30.0  # how often an edited policy file reaches the dashboard's form
POLL_WAIT_S = 25.0  # the long-poll's wait when the server does not say


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwprobe worker", description="run this machine's dashboard jobs")
    p.add_argument("--server", default=os.environ.get("HWPROBE_SERVER"), help="dashboard base URL (env HWPROBE_SERVER)")
    p.add_argument("--token", default=None, help="agent token (env HWPROBE_TOKEN)")
    p.add_argument("--token-file", default=None, help="file holding the agent token (env HWPROBE_TOKEN_FILE)")
    p.add_argument("--broker", default=None, help=argparse.SUPPRESS)  # gone: jobs come over HTTPS; accepted, ignored
    p.add_argument("--concurrency", type=int, default=4, help="jobs run at once")
    p.add_argument(
        "--config",
        default=None,
        help=f"host policy file (env HWPROBE_CONFIG; default {policy.DEFAULT_PATH} if it exists)",
    )
    p.add_argument("--jobs-dir", default=None, help="where jobs without a workdir run (one folder per job)")
    p.add_argument(
        "--state-dir",
        default=None,
        help="where the job spool lives (env HWPROBE_STATE_DIR, default ~/.local/state/hwprobe)",
    )
    p.add_argument("--heartbeat", type=float, default=executor.HEARTBEAT_S, help="seconds between job heartbeats")
    p.add_argument(
        "--report-port",
        type=int,
        default=None,
        help="the local agent's report port for jobs' token counts (env HWPROBE_REPORT_PORT, default 8791; 0: off)",
    )
    p.add_argument(
        "--cleanup-every",
        type=float,
        default=float(os.environ.get("HWPROBE_CLEANUP_EVERY_S") or cleanup.CLEANUP_EVERY_S),
        help="seconds between asks for ghost-memory cleanups an operator confirmed (env HWPROBE_CLEANUP_EVERY_S)",
    )
    p.add_argument("--log-level", default=os.environ.get("HWPROBE_LOG_LEVEL", "INFO"))
    return p


def spool_path(state_dir: str | None, server: str) -> Path:
    """The job spool of this worker for ``server``: one per dashboard, so job ids never mix."""
    root = Path(state_dir) if state_dir else default_state_dir()
    digest = hashlib.sha256(server.rstrip("/").encode()).hexdigest()[:12]
    return root / f"jobs-{digest}.sqlite3"


def effective_policy(config_path: str | None) -> tuple[policy.Policy, policy.PolicyError | None]:
    """The policy jobs are checked against, and the error when the file is broken (None: fine)."""
    try:
        return policy.load(config_path), None
    except policy.PolicyError as err:
        # A broken policy file refuses everything rather than falling back to anything looser.
        return policy.Policy(builtin_workloads=False, source=config_path), err


class PolicyReporter:
    """Sends the policy summary to the dashboard when it differs from the last one it took.

    The dashboard only uses it to guide its submit form (this worker still checks every job),
    so a failed report is logged and retried at the next check, never fatal.
    """

    def __init__(self, api: executor.ServerApi, retry_for_s: float = 10.0) -> None:
        self._api, self._retry_for_s = api, retry_for_s
        self._sent: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def report(self, host_policy: policy.Policy) -> bool:
        """True if the dashboard has this policy's summary (sent now or before)."""
        summary = host_policy.summary()
        with self._lock:  # jobs run in threads: one report at a time, none sent twice
            if summary == self._sent:
                return True
            try:
                self._api.report_policy(summary, retry_for_s=self._retry_for_s)
            except executor.ApiError as err:
                log.warning("could not send this host's policy to the dashboard: %s", err)
                if err.status is not None and 400 <= err.status < 500:
                    self._sent = summary  # refused, not unreachable: asking again would only repeat it
                return False
            self._sent = summary
            log.info(
                "sent this host's policy to the dashboard (%d templates, shell %s)",
                len(summary["templates"]),
                "allowed" if summary["allow_shell"] else "refused",
            )
            return True


def watch_policy(
    reporter: PolicyReporter,
    config_path: str | None,
    every_s: float = POLICY_CHECK_S,
    stop: threading.Event | None = None,
) -> threading.Thread:
    """Re-read the policy file every ``every_s`` seconds and report it when it changed.

    Jobs re-read it too; this also catches edits while no job comes, and retries a failed report.
    """
    stop = stop or threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            reporter.report(effective_policy(config_path)[0])

    thread = threading.Thread(target=loop, name="hwprobe-policy-watch", daemon=True)
    thread.start()
    return thread


class Worker:
    """Takes this machine's jobs from the dashboard and runs up to ``concurrency`` at once."""

    def __init__(
        self,
        api: executor.ServerApi,
        spool: JobSpool,
        config_path: str | None,
        run_options: dict[str, Any] | None = None,
        concurrency: int = 4,
        reporter: PolicyReporter | None = None,
        poll_wait_s: float = POLL_WAIT_S,
        backoff_cap_s: float = 5.0,
        cleanup_every_s: float = cleanup.CLEANUP_EVERY_S,
    ) -> None:
        self.api, self.spool, self.config_path = api, spool, config_path
        self.run_options = run_options or {}
        self.concurrency = max(1, concurrency)
        self.reporter, self.poll_wait_s = reporter, poll_wait_s
        self.outbox = Outbox(spool, api.deliver)
        self.stopping = threading.Event()
        self._backoff = Backoff(0.5, backoff_cap_s)
        self._lock = threading.Lock()
        self._free = threading.Semaphore(self.concurrency)
        self._runs: dict[tuple[int, int], executor.JobRun] = {}
        self._threads: list[threading.Thread] = []
        self._unreachable_since: float | None = None
        # The groups this worker started, on disk beside its spool: only those may be cleaned up.
        self.groups = cleanup.GroupLedger(spool.path)
        self.cleanup_every_s = cleanup_every_s

    # -- taking work ---------------------------------------------------------------------------

    def run(self) -> None:
        """Poll and run jobs until :meth:`shutdown` (or ``stopping`` is set), then wind down.

        The long-poll has a thread of its own, so a stop never waits for it to answer.
        """
        self.outbox.start()
        cleanup.Cleaner(self.api, self.groups, self.stopping, self.cleanup_every_s).start()
        threading.Thread(target=self._take_work, name="hwprobe-poll", daemon=True).start()
        while not self.stopping.wait(0.5):
            pass
        self._wind_down()

    def _take_work(self) -> None:
        while not self.stopping.is_set():
            if not self._free.acquire(timeout=0.5):
                continue
            job = self._poll()
            if job is None:
                self._free.release()
                continue
            if self.stopping.is_set():
                self._hand_back(job)
                self._free.release()
                return
            self.spool.take(job["job_id"], job["attempt"])
            log.info("job %s attempt %s taken", job["job_id"], job["attempt"])
            thread = threading.Thread(
                target=self._run_one,
                args=(job["job_id"], job["attempt"], job["spec"]),
                name=f"hwprobe-job-{job['job_id']}",
                daemon=True,
            )
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _hand_back(self, job: dict[str, Any]) -> None:
        """A job that arrived as the worker stops goes back to the queue (as a preemption would)."""
        message = "handed back: the worker was stopping when it arrived"
        try:
            self.api.finish(job["job_id"], job["attempt"], "preempted", None, message, retry_for_s=5)
        except executor.ApiError as err:
            log.warning("job %s: could not hand it back (%s); the dashboard requeues it", job["job_id"], err)

    def _poll(self) -> dict[str, Any] | None:
        """One long-poll; None when no job came (or the server is away: then after a backoff)."""
        try:
            job = self.api.next_job(self.spool.worker_id, self.spool.held(), self.poll_wait_s)
        except executor.ApiError as err:
            kind = classify(err.status)
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                if kind == RETRY:
                    log.warning("cannot reach the dashboard for work (%s); running jobs go on, retrying", err)
            if kind == AUTH:
                log.error("the dashboard refused this machine's token (%s); asking again in a minute", err)
                self.stopping.wait(60)
            elif kind != RETRY:
                log.error("the dashboard refused the request for work (%s); asking again in 30 s", err)
                self.stopping.wait(30)
            else:
                self.stopping.wait(self._backoff.next_delay())
            return None
        if self._unreachable_since is not None:
            log.info("the dashboard answers again (after %.0f s)", time.monotonic() - self._unreachable_since)
            self._unreachable_since = None
        self._backoff.reset()
        return job

    def _run_one(self, job_id: int, attempt: int, spec: dict[str, Any]) -> None:
        try:
            host_policy, broken = effective_policy(self.config_path)
            if self.reporter is not None:
                self.reporter.report(host_policy)
            options = {**self.run_options, "spool": self.spool, "outbox": self.outbox, "report_wait_s": 0}
            options["on_spawn"] = self.groups.record
            run = executor.JobRun(self.api, job_id, attempt, spec, host_policy, **options)
            with self._lock:
                self._runs[(job_id, attempt)] = run
                if self.stopping.is_set():
                    run.reason = "shutdown"
            if broken is not None:
                result = run.finish("refused", None, f"refused: this host's policy file is invalid ({broken})")
            else:
                result = run.run()
            log.info("job %s attempt %s: %s (%s)", job_id, attempt, result.outcome or "not reported", result.message)
        except Exception:  # noqa: BLE001 - a bug in one job's run must not take the worker down
            log.exception("job %s attempt %s: the run failed", job_id, attempt)
        finally:
            with self._lock:
                self._runs.pop((job_id, attempt), None)
            self._free.release()

    # -- stopping ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop taking work; :meth:`run` then stops the running jobs and sends what it can."""
        self.stopping.set()

    def _wind_down(self, flush_s: float = 10.0) -> None:
        with self._lock:
            runs, threads = list(self._runs.values()), list(self._threads)
        if runs:
            log.info("stopping %d running job(s)", len(runs))
        for run in runs:
            if run.proc is not None:
                run.stop("shutdown")
            elif run.reason is None:
                run.reason = "shutdown"  # not started yet: it hands the job back instead
        for thread in threads:
            thread.join(max(run.grace_s for run in runs) + 10 if runs else 10)
        if not self.outbox.stop(flush_s):
            log.warning("%d report(s) left in the spool; they are sent at the next start", self.spool.pending())


def main(argv: list[str] | None = None) -> int:
    """Entry point (the arguments after ``worker``); returns the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s hwprobe-worker %(levelname)s %(message)s"
    )
    if not args.server:
        print("hwprobe worker: --server (or HWPROBE_SERVER) is required", file=sys.stderr)
        return 2
    try:
        token = token_from(args.token, args.token_file)
    except OSError as err:
        print(f"hwprobe worker: cannot read the token file: {err}", file=sys.stderr)
        return 2
    if not token:
        print("hwprobe worker: --token, --token-file, HWPROBE_TOKEN or HWPROBE_TOKEN_FILE is required", file=sys.stderr)
        return 2
    try:
        host_policy = policy.load(args.config)  # fail now on a broken file, not at the first job
    except policy.PolicyError as err:
        print(f"hwprobe worker: {err}", file=sys.stderr)
        return 2
    try:
        api = executor.ServerApi(args.server, token)
    except ValueError as err:
        print(f"hwprobe worker: {err}", file=sys.stderr)
        return 2
    if args.broker:
        log.warning("--broker is ignored: jobs now come over HTTPS from %s", args.server)
    try:
        config = api.config(retry_for_s=300)
    except executor.ApiError as err:
        print(f"hwprobe worker: cannot get this machine's configuration from {args.server}: {err}", file=sys.stderr)
        return 1 if err.status is None or err.status >= 500 else 2
    reporter = PolicyReporter(api)
    reporter.report(host_policy)
    watch_policy(reporter, args.config)
    spool = JobSpool(spool_path(args.state_dir, args.server))
    gone = spool.abandon_running()
    if gone:
        log.warning("%d job(s) of an earlier run of this worker died with it; the dashboard ends them", len(gone))
    run_options: dict[str, Any] = {"heartbeat_s": args.heartbeat}
    if args.report_port is not None:
        run_options["report_port"] = args.report_port
    if args.jobs_dir:
        run_options["jobs_dir"] = Path(args.jobs_dir)
    worker = Worker(
        api,
        spool,
        args.config,
        run_options,
        args.concurrency,
        reporter,
        poll_wait_s=float(config.get("poll_wait_s") or POLL_WAIT_S),
        cleanup_every_s=args.cleanup_every,
    )

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        worker.shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "ready: machine %s, up to %d job(s) at once, spool %s (%d report(s) waiting)",
        config.get("machine"),
        worker.concurrency,
        spool.path,
        spool.pending(),
    )
    worker.run()
    spool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
