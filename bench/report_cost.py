"""Cost of one ``hwprobe.report.tokens()`` call, beside a bare Python function call, same run.

``tokens()`` adds to an in-process counter under a lock (the UDP send happens in a background
thread every 0.5 s), so it should cost about a microsecond; the target is under 5 us. Both loops
call a function object through a local name, so the loop's own cost is in both figures; the
reported number is the median of several rounds of N calls. An agent is not needed: with none,
the background datagrams are simply lost (the script points the channel at a free UDP port).

    .venv/bin/python bench/report_cost.py --calls 200000 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare(n: float, kind: str = "train", job: int | None = None) -> None:
    """The baseline: a call with the same arguments that does nothing."""


def per_call_ns(fn, calls: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn(512, kind="train")
    return (time.perf_counter_ns() - start) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    os.environ["HWPROBE_REPORT_PORT"] = str(free_udp_port())
    from hwprobe import report

    report.tokens(1)  # start the flushing thread outside the measurement
    bare_ns, report_ns = [], []
    for _ in range(args.rounds):  # interleaved, so both see the same machine load
        bare_ns.append(per_call_ns(bare, args.calls))
        report_ns.append(per_call_ns(report.tokens, args.calls))
    b, r = statistics.median(bare_ns), statistics.median(report_ns)
    print(f"{args.rounds} rounds of {args.calls:,} calls, median per call (Python {sys.version.split()[0]}):")
    print("| call | ns per call |")
    print("| --- | ---: |")
    print(f"| bare function call (same arguments) | {b:,.0f} |")
    print(f'| report.tokens(512, kind="train") | {r:,.0f} |')
    print(
        f"\nreport.tokens costs {r - b:,.0f} ns more than a bare call ({r / b:.1f}x); "
        f"target < 5,000 ns: {'PASS' if r < 5000 else 'FAIL'}"
    )
    print(f"datagrams sent meanwhile by the background thread: {report.sent_datagrams}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
