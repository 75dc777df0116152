"""``hwprobe.report``: counts reach a listening agent; without one the caller never notices."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hwprobe import channel, report
from hwprobe.tests.conftest import FIXTURES, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def agent_channel(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The agent's side of the channel, listening on a free port that report sends to."""
    ledger = channel.Ledger()
    listener = channel.Listener(0, channel.Channel(ledger)).start()
    monkeypatch.setenv("HWPROBE_REPORT_PORT", str(listener.port))
    monkeypatch.setenv(channel.SOCKET_ENV, "")  # these tests are about UDP
    report.flush()  # nothing of an earlier test may arrive here
    yield listener
    listener.close()


def drained(ledger: channel.Ledger, timeout_s: float = 5.0, timing: bool = False) -> list[dict[str, Any]]:
    """The ledger's entries once there are some; without ``timing``, counts only."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entries = ledger.drain()
        if entries:
            if not timing:
                for entry in entries:
                    entry.pop("active_s", None)
                    entry.pop("points", None)
            return entries
        time.sleep(0.02)
    return []


def test_counts_arrive_at_the_agent_with_the_job_id(agent_channel: Any) -> None:
    for _ in range(3):
        report.tokens(100, kind="train", job=7)
    report.tokens(12, kind="prompt", job=7)
    report.tokens(30, kind="generated", job=7)
    assert report.flush() == 1
    assert drained(agent_channel.channel.ledger) == [
        {"job_id": 7, "source": "report", "prompt": 12, "generated": 30, "train": 300}
    ]


def test_the_background_thread_flushes_without_being_asked(agent_channel: Any) -> None:
    report.tokens(64, job=8)
    assert drained(agent_channel.channel.ledger, 5.0) == [
        {"job_id": 8, "source": "report", "prompt": 0, "generated": 0, "train": 64}
    ]


def test_an_ollama_reply_is_counted_as_its_own_source(agent_channel: Any) -> None:
    import json

    reply = json.loads((FIXTURES / "ollama" / "chat_streaming_final_chunk.json").read_text())
    report.ollama(reply, job=9)
    report.ollama({"model": "llama3.2", "done": False}, job=9)  # a partial chunk adds nothing
    report.flush()
    assert drained(agent_channel.channel.ledger) == [
        {"job_id": 9, "source": "ollama", "prompt": 26, "generated": 282, "train": 0}
    ]


def test_a_script_reports_for_the_job_the_worker_named_and_flushes_at_exit(agent_channel: Any) -> None:
    env = {
        **os.environ,
        "HWPROBE_JOB_ID": "42",
        "HWPROBE_REPORT_PORT": str(agent_channel.port),
        "PYTHONPATH": str(ROOT),
    }
    subprocess.run(
        [sys.executable, "-c", "from hwprobe import report\nfor _ in range(1000): report.tokens(4)"],
        env=env,
        check=True,
        timeout=30,
    )
    assert drained(agent_channel.channel.ledger) == [
        {"job_id": 42, "source": "report", "prompt": 0, "generated": 0, "train": 4000}
    ]


def test_without_an_agent_calls_stay_cheap_and_nothing_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWPROBE_REPORT_PORT", str(free_port()))  # nobody listens there
    start = time.perf_counter()
    for _ in range(20_000):
        report.tokens(1, job=5)
    per_call = (time.perf_counter() - start) / 20_000
    report.flush()
    report.flush()  # an ICMP "port unreachable" from the first send must not surface either
    assert per_call < 50e-6  # about 1 us here; generous for a busy shared machine


def test_a_subprocess_with_no_agent_exits_promptly_and_cleanly() -> None:
    env = {**os.environ, "HWPROBE_REPORT_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "from hwprobe import report\nreport.tokens(5)\nprint('ok')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")
    assert time.monotonic() - started < 10


def test_the_channel_switched_off_sends_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HWPROBE_REPORT_PORT", "0")
    # No agent socket either: an agent running on this host (dev.py run) has one at the default path.
    monkeypatch.delenv("HWPROBE_REPORT_SOCKET", raising=False)
    monkeypatch.setenv("HWPROBE_STATE_DIR", str(tmp_path))
    report.tokens(5, job=1)
    assert report.flush() == 0


def test_a_wrong_kind_or_a_negative_count_raises_at_once() -> None:
    with pytest.raises(ValueError, match="kind"):
        report.tokens(5, kind="generation")
    with pytest.raises(ValueError, match=">= 0"):
        report.tokens(-1)
    with pytest.raises(ValueError):
        report.tokens(float("nan"))


def test_malformed_datagrams_are_counted_and_ignored(agent_channel: Any) -> None:
    for data in (
        b"not json",
        b"[1]",
        b'{"v": 2, "source": "report"}',
        b'{"v": 1, "source": "elsewhere"}',
        b'{"v": 1, "source": "report", "train": -5}',
        b'{"v": 1, "source": "report", "job": "x"}',
        b'{"v": 1, "scrape": "file:///etc/passwd"}',
        b"x" * 5000,
    ):
        agent_channel.channel.handle(data)
    assert agent_channel.channel.malformed == 8
    assert agent_channel.channel.ledger.take_dropped() == 8  # what the next window reports
    agent_channel.channel.handle(channel.token_datagram(3, "report", train=10))
    assert agent_channel.channel.ledger.drain() == [
        {"job_id": 3, "source": "report", "prompt": 0, "generated": 0, "train": 10}
    ]


def test_fractions_stay_in_the_ledger_until_they_make_a_whole_token() -> None:
    ledger = channel.Ledger()
    ledger.add(1, "prometheus", generated=2.5)
    assert ledger.drain() == [{"job_id": 1, "source": "prometheus", "prompt": 0, "generated": 2, "train": 0}]
    ledger.add(1, "prometheus", generated=0.75)
    assert ledger.drain() == [{"job_id": 1, "source": "prometheus", "prompt": 0, "generated": 1, "train": 0}]
    assert ledger.drain() == []


# ---- the Unix socket: nothing lost, and the time the tokens took ------------------------------


@pytest.fixture
def agent_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The agent's Unix socket in a private folder, named to report through the environment."""
    path = tmp_path / "state" / "report.sock"
    listener = channel.SocketListener(path, channel.Channel(channel.Ledger())).start()
    monkeypatch.setenv(channel.SOCKET_ENV, str(path))
    monkeypatch.setenv("HWPROBE_REPORT_PORT", "0")
    report.flush()
    yield listener
    listener.close()


def test_the_agents_socket_is_private_to_its_user(agent_socket: Any) -> None:
    assert agent_socket.path.stat().st_mode & 0o777 == 0o600


def test_counts_go_over_the_socket_with_the_seconds_between_calls(agent_socket: Any) -> None:
    report.tokens(100, job=3)
    time.sleep(0.2)
    report.tokens(100, job=3)
    time.sleep(0.2)
    report.tokens(100, job=3)
    report.flush()
    time.sleep(0.2)
    entries = agent_socket.channel.ledger.drain()  # the background thread may have sent a part
    assert sum(e["train"] for e in entries) == 300
    entry = {"active_s": sum(e.get("active_s", 0) for e in entries)}
    # Two measured gaps of 0.2 s, and the first call taken as long as those.
    assert entry["active_s"] == pytest.approx(0.6, abs=0.1)


def test_an_explicit_duration_is_what_counts(agent_socket: Any) -> None:
    report.tokens(500, kind="generated", job=4, seconds=2.5)
    report.flush()
    (entry,) = drained(agent_socket.channel.ledger, timing=True)
    assert (entry["generated"], entry["active_s"]) == (500, 2.5)


def test_counts_wait_for_an_agent_that_is_not_there_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.sock"
    monkeypatch.setenv(channel.SOCKET_ENV, str(path))
    monkeypatch.setenv("HWPROBE_REPORT_PORT", "0")
    report.flush()
    report.tokens(70, job=5)
    assert report.flush() == 0  # nobody listens: kept, not dropped
    report.tokens(30, job=5)
    listener = channel.SocketListener(path, channel.Channel(channel.Ledger())).start()
    try:
        assert report.flush() == 1
        assert drained(listener.channel.ledger) == [
            {"job_id": 5, "source": "report", "prompt": 0, "generated": 0, "train": 100}
        ]
    finally:
        listener.close()


def test_a_script_reports_over_the_socket_at_exit_even_when_the_udp_port_is_taken(agent_socket: Any) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        env = {
            **os.environ,
            "HWPROBE_JOB_ID": "43",
            "HWPROBE_REPORT_PORT": str(squatter.getsockname()[1]),
            "PYTHONPATH": str(ROOT),
        }
        subprocess.run(
            [sys.executable, "-c", "from hwprobe import report\nfor _ in range(1000): report.tokens(4)"],
            env=env,
            check=True,
            timeout=30,
        )
    assert drained(agent_socket.channel.ledger) == [
        {"job_id": 43, "source": "report", "prompt": 0, "generated": 0, "train": 4000}
    ]


def test_a_taken_udp_port_is_tried_again_until_it_is_free() -> None:
    import socket

    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", 0))
    port = squatter.getsockname()[1]
    listener = channel.Listener(port, channel.Channel(channel.Ledger()), retry_s=0.1).start()
    try:
        assert not listener.bound
        squatter.close()
        deadline = time.monotonic() + 5
        while not listener.bound and time.monotonic() < deadline:
            time.sleep(0.02)
        assert listener.bound
        channel.send(channel.token_datagram(6, "report", train=9), port)
        assert drained(listener.channel.ledger) == [
            {"job_id": 6, "source": "report", "prompt": 0, "generated": 0, "train": 9}
        ]
    finally:
        listener.close()


def test_a_ledger_keeps_each_seconds_tokens_and_work_as_points() -> None:
    ledger = channel.Ledger()
    ledger.add(2, "progress", train=1000, active_s=1.0, at=100.2)
    ledger.add(2, "progress", train=1100, active_s=1.0, at=101.2)
    ledger.add(2, "progress", train=900, active_s=0.9, at=102.1)
    (entry,) = ledger.drain()
    assert entry == {
        "job_id": 2,
        "source": "progress",
        "prompt": 0,
        "generated": 0,
        "train": 3000,
        "active_s": 2.9,
        "points": [[100.2, 1.0, 0, 0, 1000], [101.2, 1.0, 0, 0, 1100], [102.1, 0.9, 0, 0, 900]],
    }


def test_a_sender_that_gives_no_duration_gets_the_time_since_its_previous_message() -> None:
    ledger = channel.Ledger()
    handle = channel.Channel(ledger).handle
    clock = iter([10.0, 11.5, 12.0, 12.5])  # three arrivals, then the drain
    ledger._clock = lambda: next(clock)
    handle(channel.token_datagram(None, "report", train=10))
    handle(channel.token_datagram(None, "report", train=10))
    handle(channel.token_datagram(None, "report", train=10))
    (entry,) = ledger.drain()
    assert (entry["train"], entry["active_s"]) == (30, 2.0)
