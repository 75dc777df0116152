"""The storage read-speed measurement: real files, a scripted clock."""

from __future__ import annotations

import itertools
import os

from hwprobe.collectors import storage


def ticking(step_s: float):
    """A clock that advances ``step_s`` at every reading."""
    counter = itertools.count()
    return lambda: next(counter) * step_s


def test_it_reads_a_whole_file_and_divides_by_the_time_taken(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x01" * (4 * 2**20))
    # 4 blocks of 1 MiB; the clock reads 0 at the start and advances 0.5 s per block read.
    speed = storage.read_bytes_per_s(str(path), block_bytes=2**20, max_seconds=10, clock=ticking(0.5))
    assert speed == 4 * 2**20 / 2.0


def test_it_stops_after_the_time_limit(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"\x00" * (8 * 2**20))
    speed = storage.read_bytes_per_s(str(path), block_bytes=2**20, max_seconds=1.0, clock=ticking(0.5))
    assert speed == 2 * 2**20 / 1.0  # two blocks in the first second, then it stops


def test_an_unreadable_or_empty_file_gives_none(tmp_path):
    assert storage.read_bytes_per_s(str(tmp_path / "missing")) is None
    (tmp_path / "empty").write_bytes(b"")
    assert storage.read_bytes_per_s(str(tmp_path / "empty")) is None


def test_a_measurement_writes_reads_and_removes_its_scratch_file(tmp_path):
    result = storage.measure_sequential_read(str(tmp_path), size_bytes=3 * 2**20, block_bytes=2**20)
    assert result["storage_path"] == str(tmp_path)
    assert isinstance(result["storage_read_bytes_per_s"], float) and result["storage_read_bytes_per_s"] > 0
    assert result["storage_cache_dropped"] is hasattr(os, "posix_fadvise")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_it_cannot_write_gives_none(tmp_path):
    result = storage.measure_sequential_read(str(tmp_path / "no" / "such" / "dir"), size_bytes=2**20)
    assert result["storage_read_bytes_per_s"] is None
