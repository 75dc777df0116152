"""The on-disk queue between sampling and sending: SQLite in WAL mode.

``put`` assigns each sample the next ``seq`` (1, 2, ...; persisted, so it keeps growing across
restarts), the spool holds at most ``max_samples`` (the oldest are dropped and counted), and
samples leave only when the server acknowledged them (``ack``) or refused them as malformed
(``dead_letter``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_MAX_SAMPLES = 100_000  # about 11.5 days of 10 s windows


def state_dir() -> Path:
    """The agent's and worker's state folder: ``$HWPROBE_STATE_DIR``, else ``~/.local/state/hwprobe``
    (the spool, the report socket, the jobs' folders and the kept storage figure live there)."""
    base = os.environ.get("HWPROBE_STATE_DIR")
    return Path(base) if base else Path.home() / ".local" / "state" / "hwprobe"


def default_path() -> Path:
    """``spool.sqlite3`` in :func:`state_dir`."""
    return state_dir() / "spool.sqlite3"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY, body TEXT NOT NULL, error TEXT NOT NULL, at REAL NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('last_seq', 0), ('dropped', 0), ('dead', 0);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _marks(seqs: list[int]) -> str:
    """``?,?,...``: one SQL placeholder per seq, for ``seq IN (...)``."""
    return ",".join("?" * len(seqs))


class Spool:
    """A bounded, persistent FIFO of samples. Safe to share between threads."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, max_samples: int = DEFAULT_MAX_SAMPLES, durable: bool = True
    ) -> None:
        """``durable=False`` is for simulated fleets (dashboard/devtools): one open file instead of
        three and no syncs, so 10,000 spools fit in one process's file limit; a crash may lose it."""
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self._lock = threading.Lock()
        # One connection guarded by a lock: the sampler and the sender thread share it.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        if durable:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; only a power cut may lose the last commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
        else:
            self._db.execute("PRAGMA journal_mode=MEMORY")
            self._db.execute("PRAGMA synchronous=OFF")
        with self._lock:
            self._db.executescript(_SCHEMA)
            # Names this spool's seq series: a new spool (a reinstalled agent) restarts at seq 1,
            # and the server tells the two series apart by this id.
            self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('spool_id', ?)", (uuid.uuid4().hex,))
            self.spool_id: str = self._db.execute("SELECT value FROM meta WHERE name = 'spool_id'").fetchone()[0]

    def _counter(self, name: str) -> int:
        return int(self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def put(self, sample: dict[str, Any]) -> int:
        """Store a sample and return its seq; drops (and counts) the oldest when full."""
        body = json.dumps(sample, separators=(",", ":"), allow_nan=False)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._counter("last_seq") + 1
                self._db.execute("INSERT INTO samples (seq, body) VALUES (?, ?)", (seq, body))
                self._db.execute("UPDATE counters SET value = ? WHERE name = 'last_seq'", (seq,))
                held = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
                excess = held - self.max_samples
                if excess > 0:
                    self._db.execute(
                        "DELETE FROM samples WHERE seq IN (SELECT seq FROM samples ORDER BY seq LIMIT ?)", (excess,)
                    )
                    self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seq

    def peek(self, n: int) -> list[dict[str, Any]]:
        """Up to n samples, oldest first, each with its ``seq``."""
        with self._lock:
            rows = self._db.execute("SELECT seq, body FROM samples ORDER BY seq LIMIT ?", (n,)).fetchall()
        return [{"seq": seq, **json.loads(body)} for seq, body in rows]

    def ack(self, seqs: list[int]) -> int:
        """Forget these samples (the server has them); returns how many.

        By seq, not "everything up to the batch's last": a sample put back with ``requeue`` while
        the batch was in flight has a lower seq than the batch's and was not sent."""
        if not seqs:
            return 0
        with self._lock:
            return self._db.execute(f"DELETE FROM samples WHERE seq IN ({_marks(seqs)})", seqs).rowcount

    def dead_letter(self, seqs: list[int], error: str) -> int:
        """Move samples the server refused as malformed out of the queue, keeping them for people."""
        if not seqs:
            return 0
        marks = _marks(seqs)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                moved = self._db.execute(
                    f"INSERT OR REPLACE INTO dead_letters (seq, body, error, at) "
                    f"SELECT seq, body, ?, ? FROM samples WHERE seq IN ({marks})",
                    (error, time.time(), *seqs),
                ).rowcount
                self._db.execute(f"DELETE FROM samples WHERE seq IN ({marks})", seqs)
                self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dead'", (moved,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return moved

    def requeue(self, seqs: list[int] | None = None) -> list[int]:
        """Put dead letters (all, or those of ``seqs``) back in the queue under their own seq, for
        when the server that refused them has changed (an upgrade, a clock put right). They are the
        oldest samples, so the next batch carries them; the server stores a window it does not
        have whatever its seq. Returns the seqs put back.

        The ``dead`` count stays: it counts samples set aside, and one refused again counts again
        (the server's "Agent losing samples" rule fires when that count grows)."""
        if seqs is not None and not seqs:
            return []
        where, params = ("", ()) if seqs is None else (f"WHERE seq IN ({_marks(seqs)})", tuple(seqs))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                moved = [r[0] for r in self._db.execute(f"SELECT seq FROM dead_letters {where} ORDER BY seq", params)]
                # OR IGNORE: a seq both queued and set aside cannot happen through this class; if a
                # hand-edited spool has one, the queued copy wins and the letter is still cleared.
                self._db.execute(
                    f"INSERT OR IGNORE INTO samples (seq, body) SELECT seq, body FROM dead_letters {where}", params
                )
                self._db.execute(f"DELETE FROM dead_letters {where}", params)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return moved

    @property
    def dropped(self) -> int:
        """Samples discarded because the spool was full, since it was created."""
        with self._lock:
            return self._counter("dropped")

    @property
    def dead(self) -> int:
        """Samples moved to the dead-letter table, since the spool was created."""
        with self._lock:
            return self._counter("dead")

    @property
    def last_seq(self) -> int:
        """The seq of the newest sample ever put (0 before the first)."""
        with self._lock:
            return self._counter("last_seq")

    def dead_letters(self) -> list[dict[str, Any]]:
        """Refused samples: seq, error (the server's message), at (Unix s), sample."""
        with self._lock:
            rows = self._db.execute("SELECT seq, error, at, body FROM dead_letters ORDER BY seq").fetchall()
        return [{"seq": s, "error": e, "at": a, "sample": json.loads(b)} for s, e, a, b in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL back into the main file)."""
        with self._lock:
            self._db.close()
