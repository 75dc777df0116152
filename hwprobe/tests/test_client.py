"""The delivery policy against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from hwprobe.client import AUTH, OK, REJECT, RETRY, SPLIT, Backoff, IngestClient, Sender, classify
from hwprobe.spool import Spool
from hwprobe.tests.conftest import Sink, free_port


def filled(tmp_path: Path, n: int) -> Spool:
    spool = Spool(tmp_path / "s.db")
    for i in range(n):
        spool.put({"ts": float(i), "interval_s": 10.0, "count": 10, "system": {}, "gpus": []})
    return spool


def sender(spool: Spool, url: str, **kw: Any) -> Sender:
    return Sender(spool, IngestClient(url, "tok-123", timeout_s=2), backoff=Backoff(rand=lambda: 0.5), **kw)


def test_it_classifies_replies() -> None:
    assert [classify(s) for s in (200, 204, None, 500, 503, 429, 413, 401, 403, 400, 422)] == [
        OK,
        OK,
        RETRY,
        RETRY,
        RETRY,
        RETRY,
        SPLIT,
        AUTH,
        AUTH,
        REJECT,
        REJECT,
    ]


def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    backoff = Backoff(base_s=1, cap_s=60, rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    backoff.reset()
    assert Backoff(rand=lambda: 0.25).next_delay() == 0.25


def test_it_posts_the_batch_with_the_token_inventory_and_dropped(tmp_path: Path, sink: Sink) -> None:
    spool = filled(tmp_path, 3)
    s = sender(spool, sink.url, inventory={"hostname": "h"})
    assert s.step() == 0.0
    [doc] = sink.requests
    assert sink.headers[0]["Authorization"] == "Bearer tok-123"
    assert doc["agent_version"] == "0.1.0" and doc["dropped"] == 0
    assert doc["inventory"] == {"hostname": "h"}
    assert [x["seq"] for x in doc["samples"]] == [1, 2, 3]
    assert len(spool) == 0 and s.step() is None


def test_inventory_rides_only_until_accepted_and_again_after_it_changes(tmp_path: Path, sink: Sink) -> None:
    spool = filled(tmp_path, 1)
    s = sender(spool, sink.url, inventory={"hostname": "h"})
    s.step()
    spool.put({})
    s.set_inventory({"hostname": "h"})  # unchanged
    s.step()
    spool.put({})
    s.set_inventory({"hostname": "h2"})
    s.step()
    assert [d["inventory"] for d in sink.requests] == [{"hostname": "h"}, None, {"hostname": "h2"}]


def test_it_retries_after_5xx_and_delivers_when_the_server_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    replies = iter([(503, {"error": "busy"}), (500, {"error": "oops"})])
    sink = Sink(responder=lambda doc: next(replies, (200, {}))).start()
    try:
        spool = filled(tmp_path, 2)
        s = sender(spool, sink.url)
        with caplog.at_level(logging.INFO, logger="hwprobe"):
            assert s.step() == 0.5  # 0.5 * min(60, 1)
            assert s.step() == 1.0  # 0.5 * min(60, 2)
            assert s.step() == 0.0
        assert sink.accepted_seqs() == [1, 2] and len(spool) == 0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # one line per failure streak, not one per retry
        assert any("delivering again" in r.getMessage() for r in caplog.records)
    finally:
        sink.stop()


def test_it_retries_when_nothing_listens(tmp_path: Path) -> None:
    spool = filled(tmp_path, 1)
    s = sender(spool, f"http://127.0.0.1:{free_port()}")
    assert s.step() == 0.5
    assert len(spool) == 1


def test_it_halves_the_batch_on_413(tmp_path: Path) -> None:
    sink = Sink(responder=lambda doc: (413, {"error": "too large"}) if len(doc["samples"]) > 2 else (200, {})).start()
    try:
        spool = filled(tmp_path, 8)
        s = sender(spool, sink.url)
        while (delay := s.step()) is not None:
            assert delay == 0.0
        assert [len(d["samples"]) for d in sink.requests] == [8, 4, 2, 2, 2, 2]
        assert sink.accepted_seqs() == list(range(1, 9))
    finally:
        sink.stop()


def test_it_dead_letters_a_malformed_batch_and_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(
        responder=lambda doc: (
            (400, {"error": "samples[0].ts: not a number"}) if doc["samples"][0]["seq"] == 1 else (200, {})
        )
    ).start()
    try:
        spool = filled(tmp_path, 2)
        s = sender(spool, sink.url, batch_max=1)
        with caplog.at_level(logging.INFO, logger="hwprobe"):
            assert s.step() == 0.0
            assert s.step() == 0.0
        assert sink.accepted_seqs() == [2]
        assert spool.dead == 1 and spool.dead_letters()[0]["error"] == "400: samples[0].ts: not a number"
        assert [d["refused"] for d in sink.requests] == [0, 1], "the next batch tells the server"
        assert any(
            "samples[0].ts: not a number" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
        )
    finally:
        sink.stop()


def test_a_refused_token_is_logged_clearly_and_samples_stay_spooled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink(responder=lambda doc: (401, {"error": "bad token"})).start()
    try:
        spool = filled(tmp_path, 2)
        s = sender(spool, sink.url)
        with caplog.at_level(logging.INFO, logger="hwprobe"):
            delays = [s.step() for _ in range(3)]
        assert delays == [0.5, 1.0, 2.0]
        assert len(spool) == 2 and spool.dead == 0
        refused = [r for r in caplog.records if "token refused" in r.getMessage()]
        assert len(refused) == 1 and "re-enroll" in refused[0].getMessage()
    finally:
        sink.stop()


def test_it_waits_at_least_as_long_as_retry_after_says(tmp_path: Path) -> None:
    sink = Sink(responder=lambda doc: (429, {"error": "slow down"}, {"Retry-After": "7"})).start()
    try:
        s = sender(filled(tmp_path, 1), sink.url)
        assert s.step() == 7.0
    finally:
        sink.stop()


def test_every_batch_carries_the_spools_cumulative_drop_count(tmp_path: Path, sink: Sink) -> None:
    spool = Spool(tmp_path / "s.db", max_samples=2)
    for i in range(5):
        spool.put({"n": i})
    s = sender(spool, sink.url, batch_max=1)
    while s.step() is not None:
        pass
    assert [d["dropped"] for d in sink.requests] == [3, 3]
    assert sink.accepted_seqs() == [4, 5]


def test_a_refused_inventory_is_dropped_so_samples_keep_flowing(tmp_path: Path) -> None:
    sink = Sink(
        responder=lambda doc: (400, {"error": "inventory.os: not a string"}) if doc["inventory"] else (200, {})
    ).start()
    try:
        spool = filled(tmp_path, 2)
        s = sender(spool, sink.url, inventory={"hostname": "h", "os": "x"})
        while s.step() is not None:
            pass
        assert sink.accepted_seqs() == [1, 2] and spool.dead == 0
    finally:
        sink.stop()


def test_facts_nobody_could_read_are_left_out_of_the_wire_document(tmp_path: Path, sink: Sink) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(
        {
            "ts": 1.0,
            "interval_s": 1.0,
            "count": 1,
            "system": {"load1": None},
            "gpus": [{"index": 0, "uuid": None, "processes": None}],
        }
    )
    s = sender(
        spool,
        sink.url,
        inventory={"hostname": "h", "cpu_model": None, "accelerators": [{"index": 0, "name": None, "vendor": "apple"}]},
    )
    s.step()
    [doc] = sink.requests
    assert doc["inventory"] == {"hostname": "h", "accelerators": [{"index": 0, "vendor": "apple"}]}
    assert doc["samples"][0]["gpus"] == [{"index": 0, "uuid": None}]
    assert doc["samples"][0]["system"] == {"load1": None}  # metrics stay: null means "not read"


def test_a_slow_server_gets_windows_in_larger_batches_up_to_a_cap(tmp_path: Path) -> None:
    import time

    def slow(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        time.sleep(0.25)
        return 200, {"accepted": len(doc["samples"])}

    sink = Sink(responder=slow).start()
    try:
        spool = Spool(tmp_path / "s.db")
        s = sender(spool, sink.url, slow_s=0.1, hold_max=3)

        def window() -> None:
            spool.put({"ts": 0.0, "interval_s": 10.0, "count": 10, "system": {}, "gpus": []})

        window()
        assert s.step() == 0.0  # nothing known yet: one window is sent at once
        while len(sink.requests) < 7:
            window()
            s.step()
        sizes = [len(d["samples"]) for d in sink.requests]
        assert sizes[0] == 1 and sizes[-1] == s.hold_max and sizes == sorted(sizes)  # grown to the cap
        assert s.step(force=True) in (None, 0.0)  # the final flush sends what is left
        assert len(spool) == 0
    finally:
        sink.stop()


def refusing(bad: set[int]) -> Sink:
    """A server that refuses, as malformed, any batch holding one of the ``bad`` seqs."""
    return Sink(
        responder=lambda doc: (
            (400, {"error": "samples[0].ts: not a number"}) if bad & {x["seq"] for x in doc["samples"]} else (200, {})
        )
    ).start()


def test_a_malformed_sample_is_set_aside_alone_and_the_good_ones_beside_it_are_delivered(tmp_path: Path) -> None:
    sink = refusing({3, 6})
    try:
        spool = filled(tmp_path, 8)
        s = sender(spool, sink.url)
        while (delay := s.step()) is not None:
            assert delay == 0.0
        assert sink.accepted_seqs() == [1, 2, 4, 5, 7, 8]
        assert [d["seq"] for d in spool.dead_letters()] == [3, 6] and spool.dead == 2
        assert len(spool) == 0
    finally:
        sink.stop()


def test_a_split_batch_is_still_sent_while_the_server_answers_slowly(tmp_path: Path) -> None:
    # A slow server makes the sender hold windows for a bigger batch (hold() = 3 here); a split
    # had set the batch limit under that, and the sender waited for a batch it could never peek.
    sink = refusing({2})
    try:
        spool = filled(tmp_path, 3)
        s = sender(spool, sink.url)
        s.latency_s = 1.0
        assert s.hold() == 3
        for _ in range(10):
            if s.step() is None:
                break
        assert sink.accepted_seqs() == [1, 3] and spool.dead == 1 and len(spool) == 0
    finally:
        sink.stop()


def test_a_sample_put_back_while_a_batch_is_in_flight_stays_queued(tmp_path: Path) -> None:
    """``hwprobe dead-letters --requeue`` runs beside the agent: a sample it puts back during a
    request has a lower seq than the batch in flight, and the batch's ack must not take it."""
    spool = filled(tmp_path, 3)
    spool.dead_letter([1], "400: samples[0].ts: is in the future: check the agent's clock")
    requeued: list[int] = []

    def respond(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not requeued:  # while the first batch (seq 2-3) is in flight
            requeued.extend(Spool(tmp_path / "s.db").requeue())
        return 200, {}

    sink = Sink(responder=respond).start()
    try:
        s = sender(spool, sink.url)
        assert s.step() == 0.0
        assert requeued == [1] and [x["seq"] for x in spool.peek(10)] == [1]
        assert s.step() == 0.0 and len(spool) == 0
        assert sink.accepted_seqs() == [2, 3, 1]
    finally:
        sink.stop()
