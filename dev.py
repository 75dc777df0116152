#!/usr/bin/env python3
"""Run the dashboard locally, or its tests, from a fresh checkout.

    python3 dev.py run              web + worker + beat + a local agent, on http://127.0.0.1:8000
    python3 dev.py test [ARGS...]   python -m pytest ARGS (default: the whole suite)
    python3 dev.py lint             import layers, ruff (lint and format) and mypy, as CI runs them

Both create `.venv` and install requirements.txt into it when needed. Only the standard library
is used until the script has re-executed itself inside that virtualenv.
"""

from __future__ import annotations

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


class Child:
    """One supervised process whose output lines are prefixed with its name."""

    lock = threading.Lock()

    def __init__(self, name: str, argv: list[str], width: int) -> None:
        self.name = name
        self.prefix = f"{name:<{width}} | "
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
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
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


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)


def manage(*args: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"dev.py | manage.py {' '.join(args)} failed with exit code {result.returncode}")


def run() -> int:
    data_dir = Path(os.environ.get("DASHBOARD_DATA_DIR", ROOT / "data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DASHBOARD_DATA_DIR"] = str(data_dir)
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.environ.setdefault("DEBUG", "1")  # a local run: no SECRET_KEY needed (dashboard.E001)
    port = int(os.environ.get("PORT", "8000"))
    token_file = data_dir / "agent.token"

    manage("migrate")
    manage("ensure_admin")
    # The machine is named after this host, made to fit the name rules (hwprobe would say the same).
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip("-._")[:64] or "localhost"
    manage("enroll", name, "--token-file", str(token_file), "--if-missing")

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    py = sys.executable
    celery = [py, "-m", "celery", "-A", "dashboard"]
    commands = {
        "web": [py, str(ROOT / "manage.py"), "runserver", f"127.0.0.1:{port}", "--noreload"],
        "worker": [*celery, "worker", "--loglevel", "INFO", "--concurrency", "1"],
        "beat": [*celery, "beat", "--loglevel", "INFO", "--schedule", str(data_dir / "celerybeat-schedule")],
        "agent": [
            py,
            "-m",
            "hwprobe",
            "run",
            "--server",
            f"http://127.0.0.1:{port}",
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
            f"http://127.0.0.1:{port}",
            "--token-file",
            str(token_file),
            "--jobs-dir",
            str(data_dir / "jobs"),
        ],
    }
    width = max(len(name) for name in commands)
    children: list[Child] = []
    for name, argv in commands.items():
        if stopping.is_set():
            break
        if name in ("agent", "jobs"):
            wait_for_port(port, timeout_s=20)  # the agent retries anyway; this saves a first error
        children.append(Child(name, argv, width))
    say(f"dashboard on http://127.0.0.1:{port}/ - Ctrl-C stops everything")

    status = 0
    while not stopping.wait(0.5):
        dead = [c for c in children if c.proc.poll() is not None]
        if dead:
            for child in dead:
                say(f"{child.name} exited with code {child.proc.returncode}; stopping the rest")
            status = 1
            break
    else:
        say("stopping")
    stop_all(children)
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


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "lint":
        bootstrap()
        return lint()
    if command not in ("run", "test"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        bootstrap()
        if command == "test":
            os.chdir(ROOT)
            os.execv(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[2:]])
        return run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
