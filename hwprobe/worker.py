"""``python -m hwprobe worker``: a Celery worker that runs this machine's jobs.

It asks the dashboard (``GET /api/v1/agent/config``, with the agent token) which queue is this
machine's and which broker to use (``--broker`` overrides it), tells it what the host's policy
allows (``POST /api/v1/agent/policy``, again whenever the file changes), then consumes that queue only,
with a threads pool: each task ``hwprobe.run_job(job_id, attempt, spec)`` is one job run by
:mod:`hwprobe.executor`. Messages are JSON only (never pickle) and acknowledged late, one
prefetched per thread; a redelivered message is harmless because the server's ``claim`` answers
409 and nothing runs. The host's policy file (``--config``, see :mod:`hwprobe.policy`) is read
again before every job, so editing it needs no restart.

Celery is needed here, not by the telemetry agent: install the wheel with its ``worker`` extra
(``install.sh --worker`` does) or ``hwprobe/requirements-worker.txt``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from hwprobe import executor, policy
from hwprobe.client import token_from

log = logging.getLogger("hwprobe.worker")

RUN_TASK = "hwprobe.run_job"  # the name dashboard/jobs/tasks.py sends
POLICY_CHECK_S = 30.0  # how often an edited policy file reaches the dashboard's form


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwprobe worker", description="run this machine's dashboard jobs")
    p.add_argument("--server", default=os.environ.get("HWPROBE_SERVER"), help="dashboard base URL (env HWPROBE_SERVER)")
    p.add_argument("--token", default=None, help="agent token (env HWPROBE_TOKEN)")
    p.add_argument("--token-file", default=None, help="file holding the agent token (env HWPROBE_TOKEN_FILE)")
    p.add_argument("--broker", default=None, help="broker URL; default: the one the server names")
    p.add_argument("--concurrency", type=int, default=4, help="jobs run at once (threads)")
    p.add_argument(
        "--config",
        default=None,
        help=f"host policy file (env HWPROBE_CONFIG; default {policy.DEFAULT_PATH} if it exists)",
    )
    p.add_argument("--jobs-dir", default=None, help="where jobs without a workdir run (one folder per job)")
    p.add_argument("--heartbeat", type=float, default=executor.HEARTBEAT_S, help="seconds between job heartbeats")
    p.add_argument(
        "--report-port",
        type=int,
        default=None,
        help="the local agent's report port for jobs' token counts (env HWPROBE_REPORT_PORT, default 8791; 0: off)",
    )
    p.add_argument("--log-level", default=os.environ.get("HWPROBE_LOG_LEVEL", "INFO"))
    return p


def make_app(broker_url: str, queue: str, transport_options: dict[str, Any] | None = None) -> Any:
    """A Celery app that consumes ``queue`` only, JSON only, acknowledging each job at its end."""
    from celery import Celery
    from kombu import Queue

    # fixups=[]: no Django fixup even where DJANGO_SETTINGS_MODULE happens to be set; the
    # worker needs nothing of the dashboard's code.
    app = Celery("hwprobe", broker=broker_url, set_as_current=False, fixups=[])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # a broker message must never be able to run code
        task_ignore_result=True,
        task_acks_late=True,  # a job taken by a worker that dies is redelivered (claim makes it harmless)
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one job per free thread, not a backlog held by one machine
        task_queues=[Queue(queue)],
        task_default_queue=queue,
        broker_transport_options=transport_options or {},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # The embedded broker (kombu filesystem) has no broadcast, so no remote control there.
        worker_enable_remote_control=not broker_url.startswith("filesystem"),
    )
    return app


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


def register(
    app: Any,
    api: executor.ServerApi,
    config_path: str | None,
    options: dict[str, Any],
    reporter: PolicyReporter | None = None,
) -> Any:
    """Register ``hwprobe.run_job`` on ``app``; each run reads the host policy afresh.

    With a ``reporter``, a policy that changed since the last report is sent before the job runs.
    """

    @app.task(name=RUN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job(job_id: int, attempt: int, spec: dict[str, Any]) -> dict[str, Any]:
        host_policy, broken = effective_policy(config_path)
        if reporter is not None:
            reporter.report(host_policy)
        if broken is not None:
            result = executor.JobRun(api, job_id, attempt, spec, host_policy, **options).finish(
                "refused", None, f"refused: this host's policy file is invalid ({broken})"
            )
        else:
            result = executor.run_job(api, job_id, attempt, spec, host_policy, **options)
        log.info("job %s attempt %s: %s (%s)", job_id, attempt, result.outcome or "not reported", result.message)
        return {"outcome": result.outcome, "exit_code": result.exit_code}

    return run_job


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
    try:
        config = api.config(retry_for_s=300)
    except executor.ApiError as err:
        print(f"hwprobe worker: cannot get this machine's configuration from {args.server}: {err}", file=sys.stderr)
        return 1 if err.status is None or err.status >= 500 else 2
    reporter = PolicyReporter(api)
    reporter.report(host_policy)
    watch_policy(reporter, args.config)
    broker = args.broker or config["broker_url"]
    options = {} if args.broker else (config.get("broker_transport_options") or {})
    queue = config["queue"]
    app = make_app(broker, queue, options)
    run_options: dict[str, Any] = {"heartbeat_s": args.heartbeat}
    if args.report_port is not None:
        run_options["report_port"] = args.report_port
    if args.jobs_dir:
        run_options["jobs_dir"] = Path(args.jobs_dir)
    register(app, api, args.config, run_options, reporter)
    log.info("machine %s: consuming %s (%d at once)", config.get("machine"), queue, args.concurrency)
    app.worker_main(
        [
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(max(1, args.concurrency)),
            "--queues",
            queue,
            "--hostname",
            f"hwprobe@{config.get('machine') or socket.gethostname()}",
            "--loglevel",
            args.log_level.upper(),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
