"""Shared helpers: fixture files, NVML replays of real captures, a local HTTP sink."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hwprobe.testing import nvml_replay

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]

CAPTURES = {
    "h100": "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__excerpt.txt",
    "h200": "linux-x86_64__nvidia-h200__590.48.01__excerpt.txt",
    "l40s": "linux-x86_64__nvidia-l40s__595.80__excerpt.txt",
    "rtx4080s": "linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05__excerpt.txt",
    "h100_mig": "linux-x86_64__nvidia-h100-mig__590.48.01__excerpt.txt",
}


def capture_q(gpu: str, phase: str) -> tuple[str, str]:
    """(nvidia-smi -q text, nvidia-smi -L text) of one capture, phase "idle" or "load"."""
    bundle = (FIXTURES / "nvidia_smi" / CAPTURES[gpu]).read_text()
    return (
        nvml_replay.capture_section(bundle, f"{phase} :: query (-q)"),
        nvml_replay.capture_section(bundle, "capabilities :: list (-L)"),
    )


def replay(gpu: str, phase: str) -> nvml_replay.NvmlReplay:
    q, listing = capture_q(gpu, phase)
    return nvml_replay.from_nvidia_smi_q(q, listing)


def dependency_wheels(dest: Path) -> Path:
    """The agent's runtime dependencies (pyproject.toml's pins) as wheels in ``dest``, so that test
    installs run with ``--no-index --find-links dest``: fast, and the same versions every time."""
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    if not list(dest.glob("psutil-*.whl")) or not list(dest.glob("nvidia_ml_py-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps", "-d", str(dest)]
            + pins,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """A real HTTP server on 127.0.0.1 that records ingest POSTs.

    ``responder(document) -> (status, body)`` decides each reply; the default accepts all.
    """

    def __init__(
        self, port: int | None = None, responder: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]] | None = None
    ) -> None:
        self.port = port or free_port()
        self.responder = responder or (lambda doc: (200, {"accepted": len(doc["samples"])}))
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Sink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                document = json.loads(self.rfile.read(length))
                with sink.lock:
                    sink.requests.append(document)
                    sink.headers.append(dict(self.headers))
                    status, body, *extra = sink.responder(document)
                    if 200 <= status < 300:
                        sink.accepted.append(document)
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted_seqs(self) -> list[int]:
        with self.lock:
            return [s["seq"] for doc in self.accepted for s in doc["samples"]]


@pytest.fixture
def sink() -> Any:
    server = Sink().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_report_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents and job runs started by tests keep off the machine's real report port (8791)
    unless a test names one."""
    monkeypatch.setenv("HWPROBE_REPORT_PORT", "0")
