"""The agent's sampling loop in-process: real collectors, spool and sender against a local sink."""

from __future__ import annotations

import threading
from pathlib import Path

from hwprobe.agent import Agent
from hwprobe.client import IngestClient, Sender
from hwprobe.collectors import build_probe
from hwprobe.spool import Spool
from hwprobe.tests.conftest import Sink
from hwprobe.tests.test_cli import wait_until


def test_the_first_window_spans_its_snapshots_interval_like_every_later_one(tmp_path: Path) -> None:
    """With a window per snapshot, the first window used to span only its own collect: 0.0 s once
    rounded when the collect took under 0.5 ms. The server refuses interval_s 0 as malformed and the
    agent dead-letters the window (seen in test_faults, a window lost, on 1 December). The wall
    clock is held still here, so the old code gives 0.0 every time."""
    sink = Sink().start()
    spool = Spool(tmp_path / "spool.sqlite3")
    agent = Agent(
        build_probe(),
        spool,
        Sender(spool, IngestClient(sink.url, "t")),
        interval_s=0.2,
        send_every_s=0.2,
        wall=lambda: 1_800_000_000.0,
    )
    loop = threading.Thread(target=agent.run)
    loop.start()
    try:
        assert wait_until(lambda: sink.accepted, 10)
    finally:
        agent.stop.set()
        loop.join(10)
        sink.stop()
    first = sink.accepted[0]["samples"][0]
    assert (first["seq"], first["count"], first["interval_s"]) == (1, 1, 0.2)
