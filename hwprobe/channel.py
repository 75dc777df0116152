"""The agent's local channel: small JSON datagrams on UDP 127.0.0.1, from jobs and the worker.

Two kinds of datagram (UTF-8 JSON objects, at most 4 KiB, ``"v": 1``):

* token counts, produced since the sender's previous datagram::

    {"v": 1, "job": 12 | null, "source": "report" | "progress" | "ollama",
     "prompt": n, "generated": n, "train": n}

* scrape registrations, a Prometheus endpoint to scrape for a job until it is stopped::

    {"v": 1, "scrape": "http://127.0.0.1:8000/metrics", "job": 12 | null,
     "engine": "auto" | "vllm" | ..., "from_zero": false, "stop": false}

  ``from_zero`` says the endpoint's counters started with the job, so the first scrape counts
  in full (the executor sets it for the built-in ``serve``, whose server starts with the job);
  otherwise the first scrape only sets the baseline.

UDP is connectionless: a sender never waits, and with no agent listening a datagram is simply
lost. Anything malformed is counted and ignored. Counts accumulate per (job, source) in a
:class:`Ledger` and leave with the window that closes next (``sample["tokens"]``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("hwprobe")

DEFAULT_PORT = 8791
PORT_ENV = "HWPROBE_REPORT_PORT"
MAX_DATAGRAM = 4096
KINDS = ("prompt", "generated", "train")
SOURCES = ("progress", "prometheus", "ollama", "report")
LOCAL_SOURCES = ("progress", "ollama", "report")  # "prometheus" counts come from the agent's own scrapes
MAX_ENTRIES = 256  # per window, as the server accepts
MAX_COUNT = 10**15
MAX_JOB_ID = 2**53


def port_from_env(default: int = DEFAULT_PORT) -> int:
    """The channel's port: ``$HWPROBE_REPORT_PORT`` or ``default``; 0 means disabled."""
    raw = os.environ.get(PORT_ENV, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        return default


def token_datagram(job: int | None, source: str, prompt: float = 0, generated: float = 0, train: float = 0) -> bytes:
    """One token-count datagram (tokens produced since the previous one; fractions are kept)."""
    return json.dumps(
        {"v": 1, "job": job, "source": source, "prompt": prompt, "generated": generated, "train": train},
        separators=(",", ":"),
    ).encode()


def scrape_datagram(
    url: str, job: int | None, engine: str = "auto", stop: bool = False, from_zero: bool = False
) -> bytes:
    """A registration (or, with ``stop``, its end) of a Prometheus endpoint to scrape for ``job``."""
    return json.dumps(
        {"v": 1, "scrape": url, "job": job, "engine": engine, "stop": stop, "from_zero": from_zero},
        separators=(",", ":"),
    ).encode()


def send(data: bytes, port: int | None = None) -> bool:
    """Send one datagram to the local agent; False (never an exception) when it could not leave."""
    port = port_from_env() if port is None else port
    if not port:
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(data, ("127.0.0.1", port))
        return True
    except OSError:
        return False


class Ledger:
    """Token counts per (job, source) since the last :meth:`drain`; safe across threads.

    Counts may be fractional (a Prometheus counter can be a float); whole tokens leave with the
    window and the fraction stays for the next one, so nothing is lost to rounding.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[int | None, str], list[float]] = {}
        self.dropped_entries = 0

    def add(self, job: int | None, source: str, prompt: float = 0, generated: float = 0, train: float = 0) -> None:
        """Add tokens (counts >= 0) produced by ``job`` (None: outside jobs) through ``source``."""
        with self._lock:
            row = self._counts.get((job, source))
            if row is None:
                if len(self._counts) >= MAX_ENTRIES:
                    self.dropped_entries += 1
                    return
                row = self._counts[(job, source)] = [0.0, 0.0, 0.0]
            row[0] += prompt
            row[1] += generated
            row[2] += train

    def drain(self) -> list[dict[str, Any]]:
        """The window's ``tokens`` entries (whole tokens, non-zero ones only); keeps the fractions."""
        out = []
        with self._lock:
            for (job, source), row in list(self._counts.items()):
                whole = [min(MAX_COUNT, int(v)) for v in row]
                if not any(whole):
                    if not any(row):
                        del self._counts[(job, source)]
                    continue
                out.append(
                    {"job_id": job, "source": source, "prompt": whole[0], "generated": whole[1], "train": whole[2]}
                )
                fractions = [v - w for v, w in zip(row, whole, strict=True)]
                if any(fractions):
                    self._counts[(job, source)] = fractions
                else:
                    del self._counts[(job, source)]
        return out


def _count(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0 or value > MAX_COUNT:
        return None
    return float(value)


def _job(value: Any) -> tuple[bool, int | None]:
    if value is None:
        return True, None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOB_ID:
        return False, None
    return True, value


def decode(data: bytes) -> dict[str, Any] | None:
    """A checked datagram: ``{"kind": "tokens", ...}`` or ``{"kind": "scrape", ...}``; None if malformed."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("v") != 1:
        return None
    ok, job = _job(message.get("job"))
    if not ok:
        return None
    if "scrape" in message:
        url = message["scrape"]
        engine = message.get("engine", "auto")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 500:
            return None
        if not isinstance(engine, str) or len(engine) > 32:
            return None
        return {
            "kind": "scrape",
            "url": url,
            "job": job,
            "engine": engine,
            "stop": message.get("stop") is True,
            "from_zero": message.get("from_zero") is True,
        }
    source = message.get("source")
    if source not in LOCAL_SOURCES:
        return None
    counts = {k: _count(message.get(k, 0)) for k in KINDS}
    if any(v is None for v in counts.values()):
        return None
    return {"kind": "tokens", "job": job, "source": source, **counts}


class Listener:
    """Receives datagrams on 127.0.0.1:``port`` in its own thread; tokens go to ``ledger``,
    registrations to ``on_scrape(message)``."""

    def __init__(self, port: int, ledger: Ledger, on_scrape: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.ledger = ledger
        self.on_scrape = on_scrape
        self.malformed = 0
        self.received = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", port))
        self._sock.settimeout(0.5)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hwprobe-report", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def handle(self, data: bytes) -> None:
        message = decode(data)
        if message is None:
            self.malformed += 1
            if self.malformed in (1, 10, 100) or self.malformed % 1000 == 0:
                log.warning("report channel: %d malformed datagram(s) ignored so far", self.malformed)
            return
        self.received += 1
        if message["kind"] == "tokens":
            self.ledger.add(
                message["job"], message["source"], message["prompt"], message["generated"], message["train"]
            )
        elif self.on_scrape is not None:
            self.on_scrape(message)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError as err:
                if self._stop.is_set():
                    break
                log.warning("report channel: %s", err)
                self._stop.wait(1.0)
                continue
            try:
                self.handle(data)
            except Exception:  # a bad datagram must never end the listener
                log.exception("report channel: could not handle a datagram")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
