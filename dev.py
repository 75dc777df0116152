#!/usr/bin/env python3
"""Run the dashboard locally, or its tests, from a fresh checkout.

    python3 dev.py run [--port N] [--verbose]   web + worker + beat + a local agent, on http://127.0.0.1:8000
    python3 dev.py test [--full] [ARGS...]   python -m pytest ARGS: the in-process suite (3-6 min; -n 2: 2-3);
                                    -m "integration or browser" / -m slow run the others, --full all
    python3 dev.py lint             import layers, ruff (lint and format) and mypy, as CI runs them

Both create `.venv` and install requirements.txt into it when needed. Only the standard library
is used until the script has re-executed itself inside that virtualenv.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
VENV_PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / "requirements.sha256"
GRACE_S = 10.0


def say(message: str) -> None:
    print(f"dev.py | {message}", flush=True)


def requirements_hash(path: Path, seen: set[Path] | None = None) -> str:
    """Hash a requirements file together with the files it includes with `-r`."""
    seen = seen if seen is not None else set()
    digest = hashlib.sha256()
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    text = path.read_text()
    digest.update(text.encode())
    for included in re.findall(r"^\s*-r\s+(\S+)", text, flags=re.MULTILINE):
        digest.update(requirements_hash(path.parent / included, seen).encode())
    return digest.hexdigest()


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def bootstrap() -> None:
    """Make `.venv` current with the locked requirements-dev.txt, then continue inside it.

    Every package is checked against the lock's hashes, wherever pip finds it (PyPI or a local
    mirror). Editing either lock (requirements.txt, which requirements-dev.txt repeats) re-installs.
    """
    if not VENV_PYTHON.exists():
        say(f"creating {VENV.relative_to(ROOT)}")
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except Exception as exc:  # ensurepip missing is the usual cause on Debian/Ubuntu
            sys.exit(f"dev.py | could not create .venv ({exc}); on Debian: apt-get install python3-venv")
    wanted = "".join(requirements_hash(ROOT / lock) for lock in ("requirements.txt", "requirements-dev.txt"))
    if not STAMP.exists() or STAMP.read_text().strip() != wanted:
        say("installing requirements-dev.txt into .venv")
        subprocess.run(
            [
                str(VENV_PYTHON),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "--require-hashes",
                "-r",
                str(ROOT / "requirements-dev.txt"),
            ],
            check=True,
        )
        STAMP.write_text(wanted + "\n")
    if not in_venv():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(ROOT / "dev.py"), *sys.argv[1:]])


# ---- run: the stack as child processes, a guard that outlives dev.py, a quiet console --------------

# A line worth showing without --verbose: a warning, an error, a traceback, or a 5xx answer.
IMPORTANT = re.compile(r"\b(WARNING|ERROR|CRITICAL|FATAL|Traceback)\b|Error\b|Exception\b|\" 5\d\d \d+$")
# Warnings every run prints that say nothing: the embedded broker has no host name, beat's banner,
# the development server's reminder.
NOISE = re.compile(r"No hostname was supplied|logfile -> |This is a development server")


class Child:
    """One supervised process; its output lines are prefixed with its name and, unless verbose, filtered."""

    lock = threading.Lock()

    def __init__(self, name: str, argv: list[str], width: int, verbose: bool) -> None:
        self.name = name
        self.prefix = f"{name:<{width}} | "
        self.verbose = verbose
        # A session of its own: Ctrl-C reaches only dev.py, which then stops children in order.
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        in_traceback = False
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if not self.verbose:
                # A traceback's indented lines follow its first; the first unindented line after it ends it.
                in_traceback = in_traceback and (line[:1] in (" ", "\t") or line.startswith("During handling"))
                shown = in_traceback or bool(IMPORTANT.search(line) and not NOISE.search(line))
                in_traceback = in_traceback or "Traceback" in line
                if not shown:
                    continue
            with Child.lock:
                sys.stdout.write(self.prefix + line + "\n")
                sys.stdout.flush()


def stop_all(children: list[Child]) -> None:
    """Stop in reverse start order, so the agent flushes to a web server that is still up."""
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.terminate()
        try:
            child.proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            say(f"{child.name} did not stop within {GRACE_S:.0f} s; killing it")
            child.proc.kill()
            child.proc.wait()
        child.reader.join(timeout=1)


def guard() -> int:
    """``dev.py _guard``: end every process dev.py started, with their descendants, once dev.py is gone.

    dev.py writes each child's pid to this process's stdin and keeps the pipe open while it lives;
    end of file means dev.py ended, however it ended (a SIGKILL, a closed terminal). Descendants are
    looked up every second while dev.py runs, so a job process whose worker died first is still known.
    """
    import psutil  # in .venv: the agent's one dependency

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    roots: list[int] = []
    known: dict[int, psutil.Process] = {}
    lines: list[str] = []
    closed = threading.Event()

    def read() -> None:
        for line in sys.stdin:
            lines.append(line)
        closed.set()

    threading.Thread(target=read, daemon=True).start()

    def survey() -> None:
        while lines:
            roots.append(int(lines.pop(0)))
        for pid in roots:
            try:
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    known.setdefault(proc.pid, proc)
            except psutil.Error:
                continue

    while not closed.wait(1.0):
        survey()
    survey()
    alive = [p for p in known.values() if p.is_running()]  # is_running compares start times: no reused pid
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return 0


def start_guard() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "dev.py"), "_guard"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        start_new_session=True,  # a closed terminal's SIGHUP does not reach it
        text=True,
    )


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)


def manage(*args: str, quiet: bool = False) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, capture_output=quiet, text=True)
    if result.returncode != 0:
        if quiet:
            sys.stdout.write(result.stdout + result.stderr)
        sys.exit(f"dev.py | manage.py {' '.join(args)} failed with exit code {result.returncode}")


class Events:
    """One console line per event that matters, read from the database: a machine online or offline,
    a job started or ended. Quieter and surer than reading it out of the processes' logs."""

    def __init__(self) -> None:
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
        django.setup()
        self.online: dict[str, bool] = {}
        self.jobs: dict[int, str] = {}
        self.first = True

    def poll(self) -> None:
        from django.db import close_old_connections

        from dashboard.fleet.models import Machine
        from dashboard.jobs.models import Job

        close_old_connections()
        for machine in Machine.objects.all():
            now = machine.is_online()
            if self.online.get(machine.name) != now and (now or machine.name in self.online):
                say(f"machine {machine.name} is {'online' if now else 'offline'}")
            self.online[machine.name] = now
        for pk, name, status, where, message in Job.objects.exclude(status=Job.Status.QUEUED).values_list(
            "pk", "name", "status", "machine__name", "status_message"
        ):
            before = self.jobs.get(pk)
            self.jobs[pk] = status
            if self.first or before == status:
                continue
            if status == Job.Status.RUNNING:
                say(f"job #{pk} {name} started on {where}")
            elif status in (Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED, Job.Status.LOST):
                say(f"job #{pk} {name} {status}" + (f": {message}" if message and status != "succeeded" else ""))
        self.first = False

    def requeue_preemptible(self, machine: str, timeout_s: float) -> None:
        """Ask this machine's running preemptible jobs to stop and go back to the queue (the worker
        preempts them at its next heartbeat), so that stopping dev.py does not leave them lost."""
        from django.db import close_old_connections

        from dashboard.jobs.models import Job

        close_old_connections()
        running = Job.objects.filter(status=Job.Status.RUNNING, preemptible=True, machine__name=machine)
        ids = list(running.values_list("pk", flat=True))
        if not ids:
            return
        running.update(preempt_requested=True)
        say(f"queueing preemptible job(s) {', '.join(f'#{i}' for i in ids)} again")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and Job.objects.filter(pk__in=ids, status=Job.Status.RUNNING).exists():
            time.sleep(0.5)


def run(port: int, verbose: bool) -> int:
    data_dir = Path(os.environ.get("DASHBOARD_DATA_DIR", ROOT / "data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DASHBOARD_DATA_DIR"] = str(data_dir)
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.environ.setdefault("DEBUG", "1")  # a local run: no SECRET_KEY needed (dashboard.E001)
    if not verbose:  # the management commands and the web server log at INFO otherwise
        os.environ.setdefault("LOG_LEVEL", "WARNING")
    token_file = data_dir / "agent.token"
    server = f"http://127.0.0.1:{port}"

    manage("migrate", *([] if verbose else ["-v", "0"]))
    manage("ensure_admin")
    # The machine is named after this host, made to fit the name rules (hwprobe would say the same).
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip("-._")[:64] or "localhost"
    manage("enroll", name, "--token-file", str(token_file), "--if-missing", "--server", server)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    py = sys.executable
    level = "INFO" if verbose else "WARNING"
    celery = [py, "-m", "celery", "-A", "dashboard"]
    commands = {
        "web": [py, str(ROOT / "manage.py"), "runserver", f"127.0.0.1:{port}", "--noreload"],
        "worker": [*celery, "worker", "--loglevel", level, "--concurrency", "1"],
        "beat": [*celery, "beat", "--loglevel", level, "--schedule", str(data_dir / "celerybeat-schedule")],
        "agent": [
            py,
            "-m",
            "hwprobe",
            "run",
            "--server",
            server,
            "--token-file",
            str(token_file),
            "--spool",
            str(data_dir / "agent-spool.sqlite3"),
        ],
        # This machine's job worker: with no host config it runs only the built-in workloads.
        "jobs": [
            py,
            "-m",
            "hwprobe",
            "worker",
            "--server",
            server,
            "--token-file",
            str(token_file),
            "--jobs-dir",
            str(data_dir / "jobs"),
            "--state-dir",
            str(data_dir / "worker-state"),
            "--heartbeat",
            "2",
        ],
    }
    width = max(len(name) for name in commands)
    events = Events()
    keeper = start_guard()
    assert keeper.stdin is not None
    children: list[Child] = []
    for child_name, argv in commands.items():
        if stopping.is_set():
            break
        if child_name in ("agent", "jobs"):
            wait_for_port(port, timeout_s=20)  # the agent retries anyway; this saves a first error
        children.append(Child(child_name, argv, width, verbose))
        keeper.stdin.write(f"{children[-1].proc.pid}\n")
        keeper.stdin.flush()
    # The first page a new user opens should know this machine (its GPUs, or that it has none).
    deadline = time.monotonic() + 30
    while not stopping.is_set() and time.monotonic() < deadline and not events.online.get(name):
        try:
            events.poll()
        except Exception:  # noqa: BLE001 - the database may be busy with the first migrations' writers
            pass
        stopping.wait(0.5)
    say(f"dashboard on {server}/ - Ctrl-C stops everything" + ("" if verbose else " (--verbose shows every log line)"))

    status = 0
    while not stopping.wait(1.0):
        try:
            events.poll()
        except Exception as exc:  # noqa: BLE001 - a locked SQLite file now and then must not stop the stack
            if verbose:
                say(f"event poll failed: {exc}")
        dead = [c for c in children if c.proc.poll() is not None]
        if dead:
            for child in dead:
                say(f"{child.name} exited with code {child.proc.returncode}; stopping the rest")
            status = 1
            break
    else:
        say("stopping")
        # Placement first: a job handed back now must wait in the queue, not be placed here again.
        stop_all([c for c in children if c.name in ("worker", "beat")])
        try:
            events.requeue_preemptible(name, timeout_s=8)
        except Exception as exc:  # noqa: BLE001 - stopping goes on whatever the database says
            say(f"could not queue running jobs again: {exc}")
    stop_all(children)
    keeper.stdin.close()  # the guard ends what is left, such as a job's processes
    keeper.wait(timeout=GRACE_S)
    return status


LINTERS = {
    "layers (lint-imports)": ["lint-imports", "--no-cache"],
    "ruff check": ["ruff", "check", "."],
    "ruff format": ["ruff", "format", "--check", "."],
    "mypy": ["mypy"],
}


def lint() -> int:
    """Run every linter (configured in .importlinter and pyproject.toml); 1 if any failed."""
    failed = []
    for name, argv in LINTERS.items():
        say(f"lint: {name}")
        if subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT).returncode != 0:
            failed.append(name)
    say("lint: " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"))
    return 1 if failed else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dev.py", description="Run the dashboard locally, or its tests, from a fresh checkout."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_cmd = commands.add_parser(
        "run",
        help="web, Celery worker and beat, a local agent and job worker",
        description="Set up .venv and the database, enroll this machine, then run the web server, a Celery worker "
        "and beat, an agent and this machine's job worker until Ctrl-C. Every process ends with dev.py, "
        "however it ends; Ctrl-C first puts running preemptible jobs back in the queue.",
    )
    run_cmd.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="default 8000")
    run_cmd.add_argument(
        "--verbose", "-v", action="store_true", help="every log line (default: warnings, errors and events)"
    )
    commands.add_parser(
        "test",
        help="python -m pytest ARGS: the in-process suite; -m 'integration or browser', -m slow or --full for more",
        add_help=False,
        prefix_chars="\0",
    )
    commands.add_parser("lint", help="import layers, ruff (lint and format) and mypy, as CI runs them")
    commands.add_parser("_guard")  # internal: see guard()
    if argv[:1] == ["test"]:  # everything after `test` is pytest's, --help included
        rest = argv[1:]
        if "--full" in rest:
            # Every suite: an empty marker expression (after pytest.ini's) deselects nothing.
            rest = [a for a in rest if a != "--full"] + ["-m", ""]
        return argparse.Namespace(command="test", pytest_args=rest)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args(sys.argv[1:])
    if args.command == "_guard":
        return guard()
    if args.command == "lint":
        bootstrap()
        return lint()
    try:
        bootstrap()
        if args.command == "test":
            os.chdir(ROOT)
            os.execv(sys.executable, [sys.executable, "-m", "pytest", *args.pytest_args])
        return run(args.port, args.verbose)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
