"""Sequential read speed of the storage a model's weights would stream from, measured once, briefly.

No operating system publishes a drive's read speed, so it is measured: a scratch file is written
and synced, dropped from the page cache (``posix_fadvise(DONTNEED)`` where the OS has it), then
read back in large blocks for at most a couple of seconds. The dashboard's planner uses the
figure for the "fits if streamed" bound (tokens/s ≤ read bytes/s ÷ bytes streamed per token).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable

DEFAULT_SIZE_BYTES = 256 * 2**20  # large enough to pass drive caches' bursts, small enough to write in a second
DEFAULT_BLOCK_BYTES = 8 * 2**20
DEFAULT_MAX_SECONDS = 2.0


def _drop_cache(fd: int) -> bool:
    """Ask the OS to forget the file's cached pages; False where it cannot (macOS has no fadvise)."""
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is None:
        return False
    try:
        fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True


def read_bytes_per_s(
    path: str,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> float | None:
    """Sequential read speed of an existing file in bytes/s, reading at most ``max_seconds``;
    None when the file cannot be read or is empty."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        _drop_cache(fd)
        buffer = bytearray(block_bytes)
        view = memoryview(buffer)
        done = 0
        start = clock()
        elapsed = 0.0
        while elapsed < max_seconds:
            n = os.readv(fd, [view])
            if n <= 0:
                break
            done += n
            elapsed = clock() - start
        if done == 0 or elapsed <= 0:
            return None
        return done / elapsed
    except OSError:
        return None
    finally:
        os.close(fd)


def measure_sequential_read(
    directory: str | None = None,
    size_bytes: int = DEFAULT_SIZE_BYTES,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, object]:
    """Write a ``size_bytes`` scratch file in ``directory`` (default: the temp dir), sync it, drop it
    from the page cache and read it back: ``{"storage_read_bytes_per_s": float | None (bytes/s),
    "storage_path": str, "storage_cache_dropped": bool}``. The figure is None when the directory is
    not writable; it may be the page cache's speed when ``storage_cache_dropped`` is False."""
    out: dict[str, object] = {"storage_read_bytes_per_s": None, "storage_path": directory or tempfile.gettempdir()}
    out["storage_cache_dropped"] = False
    block = os.urandom(min(block_bytes, size_bytes))  # incompressible, so a compressing drive cannot cheat
    try:
        fd, path = tempfile.mkstemp(prefix=".hwprobe-read-", dir=directory)
    except OSError:
        return out
    try:
        written = 0
        while written < size_bytes:
            written += os.write(fd, block[: size_bytes - written])
        os.fsync(fd)
        out["storage_cache_dropped"] = _drop_cache(fd)
        os.close(fd)
        fd = -1
        out["storage_read_bytes_per_s"] = read_bytes_per_s(path, block_bytes, max_seconds, clock)
    except OSError:
        pass
    finally:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
    return out


# The figure of a drive changes only when the drive does: once measured it is kept in the agent's
# state folder and measured again after this long (or when the folder measured changes).
REMEASURE_AFTER_S = 30 * 86400


def measured_once(
    state_file: str,
    directory: str | None = None,
    measure: Callable[[str | None], dict[str, object]] = measure_sequential_read,
    now: Callable[[], float] = time.time,
) -> dict[str, object]:
    """The read speed of ``directory``: from ``state_file`` when it holds a recent measurement of
    the same folder, else measured now (about a second of disk work) and written there.

    The result is what :func:`measure_sequential_read` returns plus ``storage_measured_at``."""
    wanted = directory or tempfile.gettempdir()
    try:
        with open(state_file, encoding="utf-8") as f:
            kept = json.load(f)
        if (
            isinstance(kept, dict)
            and kept.get("storage_path") == wanted
            and isinstance(kept.get("storage_measured_at"), int | float)
            and now() - kept["storage_measured_at"] < REMEASURE_AFTER_S
        ):
            return kept
    except (OSError, ValueError):
        pass  # none yet, or unreadable: measure again
    result = dict(measure(directory))
    result["storage_path"] = wanted
    result["storage_measured_at"] = now()
    if result.get("storage_read_bytes_per_s") is not None:
        try:
            os.makedirs(os.path.dirname(state_file) or ".", exist_ok=True)
            tmp = f"{state_file}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(result, f)
            os.replace(tmp, state_file)
        except OSError:
            pass  # measured again at the next start: a cost, not a loss
    return result
