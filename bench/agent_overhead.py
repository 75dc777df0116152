"""Overhead of ``python -m hwprobe run`` beside prometheus-node-exporter, measured together.

The agent samples every 1 s and sends every 10 s to a standard-library HTTP sink in this
process; node_exporter is scraped once a second over HTTP by this script. On a host with
``nvidia-smi``, ``nvidia-smi --query-gpu=... -l 1`` (the usual way to watch NVIDIA GPUs each
second) runs beside them as a second baseline. All are measured with psutil over the same
interval after a short warm-up: CPU as % of one core ((user + system) / wall time), RSS as mean
and max of 1 s readings.

    .venv/bin/python bench/agent_overhead.py --seconds 60
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
# What nvidia-smi reads each second in the baseline: the fields the agent reports per GPU.
SMI_QUERY = (
    "index,uuid,memory.used,power.draw,temperature.gpu,utilization.gpu,utilization.memory,"
    "clocks.sm,clocks.mem,clocks_event_reasons.active,ecc.errors.corrected.volatile.total"
)
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink(BaseHTTPRequestHandler):
    posts = 0
    samples_bytes = 0

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Sink.posts += 1
        Sink.samples_bytes += len(body)
        reply = b'{"accepted": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


def scrape_forever(url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            counts["ok"] += 1
        except OSError:
            counts["failed"] += 1
        next_at += 1.0
        stop.wait(max(0.0, next_at - time.monotonic()))


class Meter:
    """CPU seconds and RSS readings of one process."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.popen = proc
        self.ps = psutil.Process(proc.pid)
        self.rss: list[int] = []
        self.cpu0 = 0.0

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def start(self) -> None:
        self.cpu0 = self.cpu_s()

    def read(self) -> None:
        self.rss.append(self.ps.memory_info().rss)


def measure(meters: list[Meter], warmup_s: float, seconds: float) -> tuple[dict[str, float], float]:
    """After ``warmup_s``, read RSS each second for ``seconds``; return CPU % of one core by name
    and the seconds actually measured."""
    time.sleep(warmup_s)
    for meter in meters:
        meter.start()
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        time.sleep(1.0)
        for meter in meters:
            meter.read()
    elapsed = time.monotonic() - began
    return {m.name: (m.cpu_s() - m.cpu0) / elapsed * 100 for m in meters}, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured interval")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds ignored after start")
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink_url = f"http://127.0.0.1:{server.server_address[1]}"
    state = tempfile.mkdtemp(prefix="hwprobe-bench-")
    env = {**os.environ, "HWPROBE_STATE_DIR": state, "HWPROBE_LOG_LEVEL": "WARNING"}
    meters: list[Meter] = []
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hwprobe",
            "run",
            "--server",
            sink_url,
            "--token",
            "bench",
            "--interval",
            "1",
            "--send-every",
            "10",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    meters.append(Meter("hwprobe run (1 s / 10 s)", agent))

    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    exporter = None
    if os.path.exists(NODE_EXPORTER):
        port = free_port()
        exporter = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        meters.append(Meter("node_exporter (scraped 1/s)", exporter))
        threading.Thread(
            target=scrape_forever, args=(f"http://127.0.0.1:{port}/metrics", stop, counts), daemon=True
        ).start()
    else:
        print(f"{NODE_EXPORTER} is absent: measuring hwprobe alone (apt-get install prometheus-node-exporter)")

    smi = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader", "-l", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        meters.append(Meter("nvidia-smi -l 1 (query-gpu)", smi))

    try:
        cpu, elapsed = measure(meters, args.warmup, args.seconds)
    finally:
        stop.set()
        for proc in (agent, exporter, smi):
            if proc is not None:
                proc.terminate()
        for proc in (agent, exporter, smi):
            if proc is not None:
                proc.wait(15)
        server.shutdown()

    print(
        f"\nmeasured {elapsed:.0f} s after {args.warmup:.0f} s warm-up on {psutil.cpu_count()} CPUs; "
        f"sink got {Sink.posts} POSTs; node_exporter scrapes ok/failed {counts['ok']}/{counts['failed']}\n"
    )
    print(f"| {'process':<30} | {'CPU % of a core':>15} | {'RSS mean MiB':>12} | {'RSS max MiB':>11} |")
    print(f"| {'-' * 30} | {'-' * 15}:| {'-' * 12}:| {'-' * 11}:|")
    for m in meters:
        mean = sum(m.rss) / len(m.rss) / MiB
        print(f"| {m.name:<30} | {cpu[m.name]:>15.3f} | {mean:>12.1f} | {max(m.rss) / MiB:>11.1f} |")
    a = meters[0]
    for n in meters[1:]:
        cpu_ratio = cpu[a.name] / cpu[n.name] if cpu[n.name] else float("inf")
        rss_ratio = max(a.rss) / max(n.rss)
        if n.popen is exporter:
            print(
                f"\nhwprobe / node_exporter: CPU {cpu_ratio:.2f}x (target < 0.33), RSS {rss_ratio:.2f}x (target <= 1.5)"
            )
            print(
                f"verdict: CPU {'PASS' if cpu_ratio < 1 / 3 else 'FAIL'}, RSS {'PASS' if rss_ratio <= 1.5 else 'FAIL'}"
            )
        elif cpu[n.name] * elapsed / 100 < 0.02:  # psutil counts CPU in 10 ms clock ticks
            print(f"\n{n.name}: under two 10 ms clock ticks of CPU in {elapsed:.0f} s, too little for a ratio")
            print(f"hwprobe / {n.name}: RSS {rss_ratio:.2f}x")
        else:
            print(f"\nhwprobe / {n.name}: CPU {cpu_ratio:.2f}x, RSS {rss_ratio:.2f}x")
    if agent.stderr is not None:
        errors = agent.stderr.read().decode(errors="replace").strip()
        if errors:
            print("\nagent stderr:\n" + errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
