"""Token counts land in the agent's windows: from the report channel and from scraping."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

from hwprobe import channel
from hwprobe.agent import Agent
from hwprobe.scrape import Scraper
from hwprobe.tests.conftest import Sink, free_port
from hwprobe.tests.test_cli import FAST, agent, wait_until
from hwprobe.tests.test_engines import _Endpoint
from hwprobe.workloads.serve import Metrics


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def window_tokens(sink: Sink) -> list[dict[str, Any]]:
    with sink.lock:
        return [t for doc in sink.accepted for s in doc["samples"] for t in s.get("tokens", [])]


def totals(entries: list[dict[str, Any]], job: int | None, source: str) -> dict[str, int]:
    out = {"prompt": 0, "generated": 0, "train": 0}
    for e in entries:
        if e["job_id"] == job and e["source"] == source:
            for k in out:
                out[k] += e[k]
    return out


class _Spool:
    def __init__(self) -> None:
        self.samples: list[dict[str, Any]] = []

    def put(self, sample: dict[str, Any]) -> int:
        self.samples.append(sample)
        return len(self.samples)


def test_a_closing_window_takes_what_the_ledger_holds() -> None:
    ledger = channel.Ledger()
    agent_ = Agent(probe=None, spool=_Spool(), sender=None, ledger=ledger)  # type: ignore[arg-type]
    from hwprobe.aggregate import Window

    window = Window(1000.0)
    window.add({"system": {}, "gpus": []})
    ledger.add(4, "report", train=512)
    ledger.add(None, "prometheus", prompt=10, generated=7)
    agent_._put(window)
    window = Window(1001.0)
    window.add({"system": {}, "gpus": []})
    agent_._put(window)
    first, second = agent_.spool.samples
    assert first["tokens"] == [
        {"job_id": 4, "source": "report", "prompt": 0, "generated": 0, "train": 512},
        {"job_id": None, "source": "prometheus", "prompt": 10, "generated": 7, "train": 0},
    ]
    assert "tokens" not in second


def test_the_running_agent_puts_reported_and_scraped_tokens_into_its_windows(tmp_path: Path) -> None:
    metrics = Metrics()
    endpoint = _Endpoint(metrics.exposition())
    sink = Sink().start()
    port = udp_port()
    proc = agent(
        tmp_path, sink.url, "--token", "t", *FAST, "--report-port", str(port), "--scrape", f"{endpoint.url}=hwprobe"
    )
    try:
        assert wait_until(lambda: len(sink.accepted) >= 2, 20), proc.stderr
        channel.send(channel.token_datagram(21, "report", train=1000), port)
        channel.send(channel.token_datagram(21, "report", train=24), port)
        # A job-level registration of the same endpoint, counted from zero.
        metrics.prompt_tokens, metrics.generated_tokens = 40, 30
        endpoint.body = metrics.exposition()
        assert wait_until(lambda: totals(window_tokens(sink), None, "prometheus")["generated"] == 30, 10)
        assert wait_until(lambda: totals(window_tokens(sink), 21, "report")["train"] == 1024, 10)
        channel.send(channel.scrape_datagram(endpoint.url, 22, "hwprobe", from_zero=True), port)
        assert wait_until(lambda: totals(window_tokens(sink), 22, "prometheus")["generated"] == 30, 10)
        metrics.generated_tokens = 50
        endpoint.body = metrics.exposition()
        channel.send(channel.scrape_datagram(endpoint.url, 22, stop=True), port)
        assert wait_until(lambda: totals(window_tokens(sink), 22, "prometheus")["generated"] == 50, 10)
        # Each scrape's tokens reach the ledger one scrape late (hwprobe.engines.prometheus.Stretch).
        machine = {"prompt": 40, "generated": 50, "train": 0}
        assert wait_until(lambda: totals(window_tokens(sink), None, "prometheus") == machine, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        endpoint.close()
        sink.stop()
    assert proc.returncode == 0, err
    assert "scraping" in err


def test_a_scraper_keeps_scraping_the_others_when_one_endpoint_is_down() -> None:
    metrics = Metrics()
    metrics.generated_tokens = 5
    endpoint = _Endpoint(metrics.exposition())
    ledger = channel.Ledger()
    scraper = Scraper(ledger, interval_s=0.1, timeout_s=0.5)
    scraper._stop.set()  # drive it by hand
    try:
        scraper.add(f"http://127.0.0.1:{free_port()}/metrics", 1, "vllm")
        scraper.add(endpoint.url, 2, "auto", from_zero=True)
        scraper.scrape_once()
        scraper.remove(endpoint.url, 2)
        scraper.scrape_once()  # its final scrape hands over the interval held since the first
        (entry,) = ledger.drain()
        assert entry.pop("active_s") > 0  # counted since the registration: the counters started then
        assert entry == {"job_id": 2, "source": "prometheus", "prompt": 0, "generated": 5, "train": 0}
        assert [t.job for t in scraper.targets] == [1]
    finally:
        endpoint.close()
        scraper.close()


def test_an_agent_whose_report_port_is_taken_still_runs(tmp_path: Path) -> None:
    sink = Sink().start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        proc = agent(tmp_path, sink.url, "--token", "t", *FAST, "--report-port", str(taken.getsockname()[1]))
        try:
            assert wait_until(lambda: len(sink.accepted) >= 1, 20)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
            sink.stop()
    assert proc.returncode == 0 and "cannot listen" in err and "trying again" in err
    with sink.lock:
        flags = [s.get("report_udp") for doc in sink.accepted for s in doc["samples"]]
    assert flags and not any(flags)  # each window says the UDP port is not ours


def test_a_flush_over_the_socket_returns_once_the_server_has_the_tokens(tmp_path: Path) -> None:
    sink = Sink().start()
    # Windows of 10 s: only the flush can make the tokens leave within the test's few seconds.
    proc = agent(tmp_path, sink.url, "--token", "t", "--interval", "0.2", "--send-every", "10", "--report-port", "0")
    try:
        path = tmp_path / "report.sock"
        assert wait_until(lambda: path.exists(), 20), proc.stderr
        client = channel.SocketClient(path)
        assert client.send(channel.token_datagram(31, "progress", train=777, active_s=1.5))
        started = time.monotonic()
        assert client.flush() is True
        assert time.monotonic() - started < 3
        assert totals(window_tokens(sink), 31, "progress")["train"] == 777
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        sink.stop()
    assert proc.returncode == 0, err
    assert not (tmp_path / "report.sock").exists()  # removed on the way out
