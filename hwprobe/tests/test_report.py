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
    listener = channel.Listener(0, ledger).start()
    monkeypatch.setenv("HWPROBE_REPORT_PORT", str(listener.port))
    report.flush()  # nothing of an earlier test may arrive here
    yield listener
    listener.close()


def drained(ledger: channel.Ledger, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entries = ledger.drain()
        if entries:
            return entries
        time.sleep(0.02)
    return []


def test_counts_arrive_at_the_agent_with_the_job_id(agent_channel: Any) -> None:
    for _ in range(3):
        report.tokens(100, kind="train", job=7)
    report.tokens(12, kind="prompt", job=7)
    report.tokens(30, kind="generated", job=7)
    assert report.flush() == 1
    assert drained(agent_channel.ledger) == [
        {"job_id": 7, "source": "report", "prompt": 12, "generated": 30, "train": 300}
    ]


def test_the_background_thread_flushes_without_being_asked(agent_channel: Any) -> None:
    report.tokens(64, job=8)
    assert drained(agent_channel.ledger, 3.0) == [
        {"job_id": 8, "source": "report", "prompt": 0, "generated": 0, "train": 64}
    ]


def test_an_ollama_reply_is_counted_as_its_own_source(agent_channel: Any) -> None:
    import json

    reply = json.loads((FIXTURES / "ollama" / "chat_streaming_final_chunk.json").read_text())
    report.ollama(reply, job=9)
    report.ollama({"model": "llama3.2", "done": False}, job=9)  # a partial chunk adds nothing
    report.flush()
    assert drained(agent_channel.ledger) == [
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
    assert drained(agent_channel.ledger) == [
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


def test_the_channel_switched_off_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWPROBE_REPORT_PORT", "0")
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
        b'{"v": 1, "source": "prometheus"}',
        b'{"v": 1, "source": "report", "train": -5}',
        b'{"v": 1, "source": "report", "job": "x"}',
        b'{"v": 1, "scrape": "file:///etc/passwd"}',
        b"x" * 5000,
    ):
        agent_channel.handle(data)
    assert agent_channel.malformed == 8
    agent_channel.handle(channel.token_datagram(3, "report", train=10))
    assert agent_channel.ledger.drain() == [{"job_id": 3, "source": "report", "prompt": 0, "generated": 0, "train": 10}]


def test_fractions_stay_in_the_ledger_until_they_make_a_whole_token() -> None:
    ledger = channel.Ledger()
    ledger.add(1, "prometheus", generated=2.5)
    assert ledger.drain() == [{"job_id": 1, "source": "prometheus", "prompt": 0, "generated": 2, "train": 0}]
    ledger.add(1, "prometheus", generated=0.75)
    assert ledger.drain() == [{"job_id": 1, "source": "prometheus", "prompt": 0, "generated": 1, "train": 0}]
    assert ledger.drain() == []
