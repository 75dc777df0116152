"""The agent's one-line install: ``GET /agent/install.sh`` and the wheel that script downloads.

Neither needs a login: the script holds no secret (the token is passed to it on the machine) and
the wheel is the open-source agent. The wheel is ``AGENT_WHEEL_DIR``'s prebuilt one (the Docker
image builds it), else built from this repository on first request into
``DASHBOARD_DATA_DIR/agent`` and rebuilt only when a file of the agent changes.
"""

from __future__ import annotations

import fcntl
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.views.decorators.http import require_GET

import hwprobe

BUILD_TIMEOUT_S = 600
_build_lock = threading.Lock()  # threads of one process; the file lock covers other processes


class WheelUnavailable(Exception):
    """No wheel to serve: the prebuilt folder has none, or the build failed (the message says why)."""


def _agent_sources() -> list[Path]:
    """Every file of the repository that goes into the wheel's build."""
    root = Path(settings.BASE_DIR)
    skip = {"tests", "testing", "__pycache__"}
    files = [root / "pyproject.toml"]
    for file in sorted((root / "hwprobe").rglob("*")):
        if file.is_file() and not skip.intersection(file.relative_to(root).parts):
            files.append(file)
    return files


def _newest(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("hwprobe-*.whl"), key=lambda p: p.stat().st_mtime)
    return wheels[-1] if wheels else None


def _build(out: Path) -> Path:
    """Build the wheel from a copy of the agent's sources (the checkout may be read-only) into ``out``."""
    root = Path(settings.BASE_DIR)
    with tempfile.TemporaryDirectory(prefix="hwprobe-build-") as tmp:
        src = Path(tmp) / "src"
        for file in _agent_sources():
            target = src / file.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
        dist = Path(tmp) / "dist"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--quiet", "-w", str(dist)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        built = _newest(dist)
        if result.returncode != 0 or built is None:
            raise WheelUnavailable(f"pip wheel failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        for old in out.glob("hwprobe-*.whl"):
            old.unlink()
        final = out / built.name
        shutil.move(built, final)
        return final


def agent_wheel() -> Path:
    """The wheel to serve; builds it first when there is none or the agent's files changed since."""
    prebuilt = getattr(settings, "AGENT_WHEEL_DIR", "")
    if prebuilt:
        found = _newest(Path(prebuilt))
        if found is None:
            raise WheelUnavailable(f"AGENT_WHEEL_DIR ({prebuilt}) holds no hwprobe-*.whl")
        return found
    out = Path(settings.DATA_DIR) / "agent"
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock, open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # gunicorn workers are processes: one builds, the rest wait
        found = _newest(out)
        changed = max(f.stat().st_mtime for f in _agent_sources())
        if found is not None and found.stat().st_mtime >= changed:
            return found
        return _build(out)


def _unavailable(err: WheelUnavailable) -> HttpResponse:
    return HttpResponse(
        f"The agent's wheel is not available: {err}\n", status=503, content_type="text/plain; charset=utf-8"
    )


@require_GET
def install_script(request: HttpRequest) -> HttpResponse:
    """The POSIX sh installer, with this server's URL and the wheel's name in it."""
    try:
        wheel = agent_wheel()
    except WheelUnavailable as err:
        return _unavailable(err)
    server = request.build_absolute_uri("/").rstrip("/")
    wheel_url = request.build_absolute_uri(reverse("agent-wheel", args=[wheel.name]))
    script = render_to_string(
        "fleet/install.sh",
        {
            "server": server,
            "version": hwprobe.__version__,
            "server_q": shlex.quote(server),
            "wheel_url_q": shlex.quote(wheel_url),
            "wheel_name_q": shlex.quote(wheel.name),
        },
    )
    return HttpResponse(script, content_type="text/plain; charset=utf-8")


@require_GET
def wheel_file(request: HttpRequest, filename: str) -> HttpResponse:
    """The wheel, by its own file name or as ``hwprobe.whl`` (the newest)."""
    try:
        wheel = agent_wheel()
    except WheelUnavailable as err:
        return _unavailable(err)
    if filename not in (wheel.name, "hwprobe.whl"):
        raise Http404("no such wheel; GET /agent/install.sh names the current one")
    return FileResponse(open(wheel, "rb"), as_attachment=True, filename=wheel.name, content_type="application/zip")


def install_line(server: str, token: str) -> str:
    """The one command, run as root on a machine, that installs and starts its agent."""
    server = shlex.quote(server.rstrip("/"))
    return f"curl -fsSL {server}/agent/install.sh | sh -s -- --server {server} --token {shlex.quote(token)}"


urlpatterns = [
    path("install.sh", install_script, name="agent-install"),
    path("<str:filename>", wheel_file, name="agent-wheel"),
]
