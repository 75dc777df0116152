"""``hwprobe units``: write the service definitions that keep the agent (and the job worker) running.

systemd units (``hwprobe.service``, ``hwprobe-worker.service``) into ``ROOT/etc/systemd/system``
or launchd daemons (``org.hwprobe.agent.plist``, ``org.hwprobe.worker.plist``) into
``ROOT/Library/LaunchDaemons``, from the templates beside this module. They start the ``hwprobe``
console script that sits next to the running interpreter (the virtual environment installed
into), read the token from a file (``--token-file``) and print each path written. Enabling and
starting them is left to the caller (the install script served at ``/agent/install.sh``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

HERE = Path(__file__).parent
SYSTEMD_DIR = "etc/systemd/system"
LAUNCHD_DIR = "Library/LaunchDaemons"
TOKEN_FILE = "etc/hwprobe/token"
LAUNCHD_STATE_DIR = "/Library/Application Support/hwprobe"  # macOS has no /var/lib
LAUNCHD_LOG_DIR = "/Library/Logs"


def systemd_quote(arg: str) -> str:
    """One ExecStart argument, quoted where systemd would otherwise split or expand it."""
    # systemd expands %specifiers and $VARIABLES even inside quotes: double them.
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r'[\s"\'\\;]', arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_executable() -> Path:
    """The ``hwprobe`` script of the environment this interpreter runs in."""
    return Path(sys.executable).parent / "hwprobe"


def commands(executable: Path, server: str, token_file: Path) -> dict[str, list[str]]:
    """The argv of each service: ``agent`` (``hwprobe run``) and ``worker`` (``hwprobe worker``)."""
    common = ["--server", server, "--token-file", str(token_file)]
    return {"agent": [str(executable), "run", *common], "worker": [str(executable), "worker", *common]}


def render_systemd(name: str, argv: list[str], server: str) -> str:
    """The text of ``hwprobe.service`` (name "agent") or ``hwprobe-worker.service`` ("worker")."""
    template = "hwprobe.service" if name == "agent" else "hwprobe-worker.service"
    text = (HERE / template).read_text(encoding="utf-8")
    return Template(text).substitute(exec_start=" ".join(systemd_quote(a) for a in argv), server=server)


def render_launchd(name: str, argv: list[str], server: str) -> str:
    """The text of ``org.hwprobe.agent.plist`` or ``org.hwprobe.worker.plist``."""
    role = "the telemetry agent" if name == "agent" else "the job worker"
    arguments = "\n".join(f"    <string>{escape(a)}</string>" for a in argv)
    text = (HERE / "launchd.plist").read_text(encoding="utf-8")
    return Template(text).substitute(
        label=f"org.hwprobe.{name}",
        description=escape(f"{role}, reporting to {server}").replace("--", "- -"),  # no "--" in XML comments
        arguments=arguments,
        state_dir=escape(LAUNCHD_STATE_DIR + ("" if name == "agent" else "-worker")),
        report_socket=escape(f"{LAUNCHD_STATE_DIR}/report.sock"),  # the agent's, for both
        log_file=escape(f"{LAUNCHD_LOG_DIR}/hwprobe{'' if name == 'agent' else '-worker'}.log"),
    )


def write_units(
    root: Path,
    server: str,
    token_file: Path,
    worker: bool = False,
    launchd: bool = False,
    executable: Path | None = None,
) -> list[Path]:
    """Write the agent's (and with ``worker`` the worker's) service files under ``root``; their paths."""
    argv = commands(executable or default_executable(), server.rstrip("/"), token_file)
    names = ["agent", "worker"] if worker else ["agent"]
    written = []
    for name in names:
        if launchd:
            path = root / LAUNCHD_DIR / f"org.hwprobe.{name}.plist"
            text = render_launchd(name, argv[name], server.rstrip("/"))
        else:
            path = root / SYSTEMD_DIR / ("hwprobe.service" if name == "agent" else "hwprobe-worker.service")
            text = render_systemd(name, argv[name], server.rstrip("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, path)  # a service manager never reads half a file
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``hwprobe units``; returns the exit status."""
    p = argparse.ArgumentParser(prog="hwprobe units", description="write the agent's service files")
    p.add_argument("--server", required=True, help="dashboard base URL")
    p.add_argument("--root", default="/", help="prefix for every path written and referenced (default /)")
    p.add_argument("--token-file", default=None, help=f"the token file (default ROOT/{TOKEN_FILE})")
    p.add_argument("--worker", action="store_true", help="also the job worker's service")
    p.add_argument(
        "--launchd",
        action="store_true",
        default=sys.platform == "darwin",
        help="launchd plists instead of systemd units (the default on macOS)",
    )
    args = p.parse_args(argv)
    if not args.server.startswith(("http://", "https://")):
        p.error(f"--server must be an http(s) URL, not {args.server!r}")
    root = Path(args.root)
    token_file = Path(args.token_file) if args.token_file else root / TOKEN_FILE
    for path in write_units(root, args.server, token_file, worker=args.worker, launchd=args.launchd):
        print(path)
    return 0
