"""The SQLite spool: seq, bounds, drop counter, persistence, dead letters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hwprobe.spool import Spool, default_path


def test_it_numbers_samples_from_one_and_returns_them_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    assert [spool.put({"n": i}) for i in range(3)] == [1, 2, 3]
    assert spool.peek(2) == [{"seq": 1, "n": 0}, {"seq": 2, "n": 1}]
    assert len(spool) == 3


def test_ack_forgets_delivered_samples(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for i in range(5):
        spool.put({"n": i})
    assert spool.ack([1, 2, 3]) == 3
    assert [s["seq"] for s in spool.peek(10)] == [4, 5]
    assert spool.ack([5, 9]) == 1 and spool.ack([]) == 0
    assert [s["seq"] for s in spool.peek(10)] == [4]


def test_seq_keeps_growing_across_reopen_even_when_the_spool_was_emptied(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put({})
    spool.put({})
    spool.ack([1, 2])
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.put({}) == 3
    assert again.last_seq == 3


def test_a_full_spool_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_samples=3)
    for i in range(5):
        spool.put({"n": i})
    assert [s["seq"] for s in spool.peek(10)] == [3, 4, 5]
    assert spool.dropped == 2
    spool.close()
    assert Spool(tmp_path / "s.db", max_samples=3).dropped == 2


def test_dead_letters_leave_the_queue_and_are_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for i in range(3):
        spool.put({"n": i})
    assert spool.dead_letter([1, 2], "400: samples[0].ts: not a number") == 2
    assert [s["seq"] for s in spool.peek(10)] == [3]
    assert spool.dead == 2
    [first, _] = spool.dead_letters()
    assert first["seq"] == 1 and first["sample"] == {"n": 0} and first["error"].startswith("400")


def test_requeue_puts_dead_letters_back_before_newer_samples_under_their_seq(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for i in range(4):
        spool.put({"n": i})
    spool.dead_letter([1, 3], "400: samples[0].ts: is in the future")
    assert spool.requeue([3, 9]) == [3], "only what is set aside"
    assert [s["seq"] for s in spool.peek(10)] == [2, 3, 4]
    assert spool.requeue() == [1]
    assert spool.peek(1) == [{"seq": 1, "n": 0}]
    assert spool.dead_letters() == [] and spool.requeue() == [] and spool.requeue([]) == []
    assert spool.dead == 2, "counts samples ever set aside"
    assert spool.put({"n": 4}) == 5, "new samples go on numbering after the newest"


def test_it_reopens_after_the_writer_was_killed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    # A process that writes and dies without closing anything (os._exit skips every cleanup).
    code = (
        f"from hwprobe.spool import Spool; s = Spool({str(path)!r}); "
        f"[s.put({{'n': i}}) for i in range(4)]; import os; os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    spool = Spool(path)
    assert [s["n"] for s in spool.peek(10)] == [0, 1, 2, 3]
    assert spool.put({}) == 5


def test_its_default_place_follows_hwprobe_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWPROBE_STATE_DIR", str(tmp_path))
    assert default_path() == tmp_path / "spool.sqlite3"
    monkeypatch.delenv("HWPROBE_STATE_DIR")
    assert default_path().parts[-4:] == (".local", "state", "hwprobe", "spool.sqlite3")


def test_a_spool_keeps_its_id_across_reopening_and_a_new_spool_gets_another(tmp_path):
    from hwprobe.spool import Spool

    first = Spool(tmp_path / "a.sqlite3")
    same = Spool(tmp_path / "a.sqlite3")
    other = Spool(tmp_path / "b.sqlite3")
    assert first.spool_id == same.spool_id != other.spool_id


def test_a_simulators_spool_keeps_one_file_open_and_works_the_same(tmp_path: Path) -> None:
    """``durable=False`` (10,000 simulated machines in one process): no WAL or shared-memory files."""
    spool = Spool(tmp_path / "sim.sqlite3", durable=False)
    assert [spool.put({"n": i}) for i in range(3)] == [1, 2, 3]
    assert spool.ack([1, 2]) == 2
    assert [s["seq"] for s in spool.peek(10)] == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.sqlite3"]
    spool.close()
