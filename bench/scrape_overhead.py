"""The agent's extra CPU and memory for scraping one serving endpoint each second.

Two agents run side by side for the same interval, both sampling every 1 s and sending every
10 s to a sink in this process, both with their report channel open: one plain, one with
``--scrape`` of the built-in ``serve`` workload's ``/metrics`` (started here, without load, so
its own CPU use does not disturb the two). Measured with psutil as in ``agent_overhead.py``:
CPU as % of one core, RSS as mean and max of 1 s readings.

    .venv/bin/python bench/scrape_overhead.py --seconds 60
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer

import psutil
from agent_overhead import ROOT, Meter, MiB, Sink, measure


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(sink_url: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HWPROBE_STATE_DIR": tempfile.mkdtemp(prefix="hwprobe-bench-"), "HWPROBE_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
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
            "--report-port",
            str(udp_port()),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured interval")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds ignored after start")
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink_url = f"http://127.0.0.1:{server.server_address[1]}"
    serve = subprocess.Popen(
        [sys.executable, "-m", "hwprobe.workloads", "serve", "--port", "0", "--seconds", "0", "--report-every", "60"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    first = serve.stdout.readline() if serve.stdout else ""
    match = re.search(r"http://[^\s]+", first)
    if not match:
        print(f"the serve workload did not start: {first!r}")
        serve.kill()
        return 1
    metrics_url = match.group(0) + "/metrics"
    # One scrape costs well under psutil's 10 ms CPU tick: time 200 of them in this process too.
    sys.path.insert(0, str(ROOT))
    from hwprobe.engines.prometheus import Target

    target = Target(metrics_url, engine="hwprobe")
    target.scrape()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(200):
        target.scrape()
    per_scrape_cpu_ms = (time.process_time() - cpu0) / 200 * 1000
    per_scrape_wall_ms = (time.perf_counter() - wall0) / 200 * 1000
    plain = Meter("hwprobe run", start_agent(sink_url))
    scraping = Meter("hwprobe run --scrape (1/s)", start_agent(sink_url, "--scrape", f"{metrics_url}=hwprobe"))
    meters = [plain, scraping]
    try:
        cpu, elapsed = measure(meters, args.warmup, args.seconds)
    finally:
        for meter in meters:
            meter.popen.terminate()
        serve.terminate()
        for meter in meters:
            meter.popen.wait(15)
        serve.wait(15)
        server.shutdown()

    print(
        f"\nmeasured {elapsed:.0f} s after {args.warmup:.0f} s warm-up on {psutil.cpu_count()} CPUs; "
        f"scraping {metrics_url}\n"
    )
    print(f"| {'process':<30} | {'CPU % of a core':>15} | {'RSS mean MiB':>12} | {'RSS max MiB':>11} |")
    print(f"| {'-' * 30} | {'-' * 15}:| {'-' * 12}:| {'-' * 11}:|")
    for m in meters:
        mean = sum(m.rss) / len(m.rss) / MiB
        print(f"| {m.name:<30} | {cpu[m.name]:>15.3f} | {mean:>12.1f} | {max(m.rss) / MiB:>11.1f} |")
    print(
        f"\nscraping adds {cpu[scraping.name] - cpu[plain.name]:+.3f} % of a core and "
        f"{(max(scraping.rss) - max(plain.rss)) / MiB:+.1f} MiB of RSS (max)"
    )
    print(
        f"one scrape in-process (fetch + parse, 200 in a row): {per_scrape_cpu_ms:.3f} ms CPU, "
        f"{per_scrape_wall_ms:.3f} ms wall: {per_scrape_cpu_ms / 10:.3f} % of a core at one scrape a second"
    )
    for m in meters:
        errors = m.popen.stderr.read().decode(errors="replace").strip() if m.popen.stderr else ""
        if errors:
            print(f"\n{m.name} stderr:\n{errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
