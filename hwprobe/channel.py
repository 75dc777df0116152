"""The agent's local channel: small JSON messages from jobs, the job worker and any script.

Two ways in, one format (UTF-8 JSON objects, at most 4 KiB, ``"v": 1``):

* a **Unix socket** in the agent's state folder (``$HWPROBE_STATE_DIR/report.sock``, mode 0600,
  ``hwprobe run --report-socket``): a stream of newline-separated messages. Nothing is lost
  while the agent runs (the kernel holds what the agent has not read yet), a sender learns at
  once when the agent is not there (and keeps its counts to send later), and a ``flush``
  message is answered when everything sent before it has reached the server. The job worker
  and :mod:`hwprobe.report` use it whenever they can reach it (``$HWPROBE_REPORT_SOCKET``).
* **UDP 127.0.0.1:8791** (``--report-port``, ``$HWPROBE_REPORT_PORT``; 0 turns it off), for
  third-party scripts: connectionless, a datagram sent with no agent listening is lost. When
  another process holds the port the agent says so once and tries again every
  ``BIND_RETRY_S`` seconds; each window says whether it was listening (``report_udp``).

Messages:

* token counts, produced since the sender's previous message, and over how many seconds of
  work (``active_s``, optional: without it the agent takes the time since the sender's
  previous message)::

    {"v": 1, "job": 12 | null, "source": "report" | "progress" | "ollama" | "prometheus",
     "prompt": n, "generated": n, "train": n, "active_s": 1.02}

* scrape registrations, a Prometheus endpoint to scrape for a job until it is stopped::

    {"v": 1, "scrape": "http://127.0.0.1:8000/metrics", "job": 12 | null,
     "engine": "auto" | "vllm" | ..., "from_zero": false, "stop": false}

  ``from_zero`` says the endpoint's counters started with the job, so the first scrape counts
  in full; otherwise the first scrape only sets the baseline;

* ``{"v": 1, "flush": true}`` (socket only): close the current window now and answer
  ``{"v": 1, "flushed": true}`` once the server has it (``false`` after ``FLUSH_TIMEOUT_S``).
  The worker sends it when a job ends, before it reports the end, so a job's totals are final
  when its page says it ended.

Counts add up per (job, source) in a :class:`Ledger` that the next window takes
(``sample["tokens"]``), each entry with its ``active_s`` and, when it came in several pieces,
``points``: ``[end_ts, active_s, prompt, generated, train]`` per second of arrival, the job's
throughput at the resolution it was measured. Anything malformed, or over the ledger's
capacity, is counted (``tokens_dropped`` in the window) and ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("hwprobe")

DEFAULT_PORT = 8791
PORT_ENV = "HWPROBE_REPORT_PORT"
SOCKET_ENV = "HWPROBE_REPORT_SOCKET"
SOCKET_NAME = "report.sock"
MAX_DATAGRAM = 4096
KINDS = ("prompt", "generated", "train")
SOURCES = ("progress", "prometheus", "ollama", "report")
MAX_ENTRIES = 256  # per window, as the server accepts
MAX_POINTS = 120  # per entry and window; later pieces go into the last point
MAX_COUNT = 10**15
MAX_JOB_ID = 2**53
MAX_ACTIVE_S = 86400.0
MAX_GAP_S = 60.0  # a sender without active_s that was silent longer was idle, not working
BIND_RETRY_S = 10.0
FLUSH_TIMEOUT_S = 3.0
MAX_CONNECTIONS = 256


def port_from_env(default: int = DEFAULT_PORT) -> int:
    """The channel's UDP port: ``$HWPROBE_REPORT_PORT`` or ``default``; 0 means disabled."""
    raw = os.environ.get(PORT_ENV, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        return default


def default_socket_path() -> Path:
    """``$HWPROBE_STATE_DIR/report.sock``, else ``~/.local/state/hwprobe/report.sock`` (the
    agent's side; the worker's state folder differs, so it is told ``$HWPROBE_REPORT_SOCKET``)."""
    from hwprobe.spool import state_dir  # here: jobs import this module, and need no sqlite3

    return state_dir() / SOCKET_NAME


def socket_from_env() -> str | None:
    """Where senders find the agent's socket: ``$HWPROBE_REPORT_SOCKET`` (empty: use UDP only),
    else the default path when a socket is there; None when there is none."""
    raw = os.environ.get(SOCKET_ENV)
    if raw is not None:
        return raw.strip() or None
    path = default_socket_path()
    try:
        return str(path) if stat.S_ISSOCK(path.stat().st_mode) else None
    except OSError:
        return None


def token_datagram(
    job: int | None,
    source: str,
    prompt: float = 0,
    generated: float = 0,
    train: float = 0,
    active_s: float | None = None,
) -> bytes:
    """One token-count message (tokens produced since the previous one, over ``active_s``
    seconds of work; None: unknown)."""
    message: dict[str, Any] = {
        "v": 1,
        "job": job,
        "source": source,
        "prompt": prompt,
        "generated": generated,
        "train": train,
    }
    if active_s is not None:
        message["active_s"] = round(active_s, 6)
    return json.dumps(message, separators=(",", ":")).encode()


def scrape_datagram(
    url: str, job: int | None, engine: str = "auto", stop: bool = False, from_zero: bool = False
) -> bytes:
    """A registration (or, with ``stop``, its end) of a Prometheus endpoint to scrape for ``job``."""
    return json.dumps(
        {"v": 1, "scrape": url, "job": job, "engine": engine, "stop": stop, "from_zero": from_zero},
        separators=(",", ":"),
    ).encode()


FLUSH_MESSAGE = b'{"v":1,"flush":true}'


def send(data: bytes, port: int | None = None) -> bool:
    """Send one UDP datagram to the local agent; False (never an exception) when it could not leave."""
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


class _Stream:
    """What one (job, source) counted since the last drain."""

    __slots__ = ("counts", "active_s", "points", "last_at")

    def __init__(self) -> None:
        self.counts = [0.0, 0.0, 0.0]
        self.active_s = 0.0
        self.points: dict[int, list[float]] = {}  # second of arrival -> [end_ts, active_s, p, g, t]
        self.last_at: float | None = None


class Ledger:
    """Token counts per (job, source) since the last :meth:`drain`; safe across threads.

    Counts may be fractional (a Prometheus counter can be a float); whole tokens leave with the
    window and the fraction stays for the next one, so nothing is lost to rounding.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._streams: dict[tuple[int | None, str], _Stream] = {}
        self._clock = clock
        self.dropped = 0  # messages and entries lost since the last take_dropped()

    def add(
        self,
        job: int | None,
        source: str,
        prompt: float = 0,
        generated: float = 0,
        train: float = 0,
        active_s: float | None = None,
        at: float | None = None,
        estimate_active: bool = False,
    ) -> None:
        """Add tokens (counts >= 0) produced by ``job`` (None: outside jobs) through ``source``
        over ``active_s`` seconds of work, arriving at ``at`` (Unix s, default now). With
        ``estimate_active`` and no ``active_s``, the time since the previous arrival counts."""
        at = self._clock() if at is None else at
        with self._lock:
            stream = self._streams.get((job, source))
            if stream is None:
                if len(self._streams) >= MAX_ENTRIES:
                    self.dropped += 1
                    return
                stream = self._streams[(job, source)] = _Stream()
            if active_s is None and estimate_active and stream.last_at is not None:
                gap = at - stream.last_at
                active_s = gap if 0 < gap <= MAX_GAP_S else None
            stream.last_at = at
            stream.counts[0] += prompt
            stream.counts[1] += generated
            stream.counts[2] += train
            active = max(0.0, active_s or 0.0)
            stream.active_s += active
            second = int(at)
            point = stream.points.get(second)
            if point is None and len(stream.points) >= MAX_POINTS:
                point = stream.points[max(stream.points)]
            if point is None:
                stream.points[second] = [at, active, prompt, generated, train]
            else:
                point[0] = max(point[0], at)
                point[1] += active
                point[2] += prompt
                point[3] += generated
                point[4] += train

    def count_dropped(self, n: int = 1) -> None:
        """Count ``n`` messages or entries lost (the listeners' threads all call this)."""
        with self._lock:
            self.dropped += n

    def take_dropped(self) -> int:
        """Messages and entries dropped since the previous call."""
        with self._lock:
            dropped, self.dropped = self.dropped, 0
        return dropped

    def drain(self) -> list[dict[str, Any]]:
        """The window's ``tokens`` entries (whole tokens, non-zero ones only); keeps the fractions.

        ``active_s`` is there when the senders said (or the agent could tell) how long they
        worked; ``points`` when the tokens came in more than one second.
        """
        out = []
        with self._lock:
            for key, stream in list(self._streams.items()):
                whole = [min(MAX_COUNT, int(v)) for v in stream.counts]
                if not any(whole):
                    continue  # the fraction (and its active time) waits for the next window
                job, source = key
                entry: dict[str, Any] = {
                    "job_id": job,
                    "source": source,
                    "prompt": whole[0],
                    "generated": whole[1],
                    "train": whole[2],
                }
                if stream.active_s > 0:
                    entry["active_s"] = round(min(MAX_ACTIVE_S, stream.active_s), 3)
                if len(stream.points) > 1:
                    entry["points"] = [
                        [round(p[0], 3), round(p[1], 3), round(p[2], 3), round(p[3], 3), round(p[4], 3)]
                        for _, p in sorted(stream.points.items())
                    ]
                fresh = _Stream()
                fresh.counts = [v - w for v, w in zip(stream.counts, whole, strict=True)]
                fresh.last_at = stream.last_at
                self._streams[key] = fresh
                out.append(entry)
            # Forget streams with nothing left that have been quiet for longer than a gap counts.
            now = self._clock()
            for key, stream in list(self._streams.items()):
                quiet = stream.last_at is None or now - stream.last_at > MAX_GAP_S
                if quiet and not any(stream.counts):
                    del self._streams[key]
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
    """A checked message: ``{"kind": "tokens" | "scrape" | "flush", ...}``; None if malformed."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("v") != 1:
        return None
    if message.get("flush") is True:
        return {"kind": "flush"}
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
    if source not in SOURCES:
        return None
    counts = {k: _count(message.get(k, 0)) for k in KINDS}
    if any(v is None for v in counts.values()):
        return None
    active_s = message.get("active_s")
    if active_s is not None:
        active_s = _count(active_s)
        if active_s is None or active_s > MAX_ACTIVE_S:
            return None
    return {"kind": "tokens", "job": job, "source": source, "active_s": active_s, **counts}


class Channel:
    """What both ways in share: decoding, the ledger, scrape registrations, the drop counter."""

    def __init__(
        self,
        ledger: Ledger,
        on_scrape: Callable[[dict[str, Any]], None] | None = None,
        on_flush: Callable[[float], bool] | None = None,
    ) -> None:
        self.ledger = ledger
        self.on_scrape = on_scrape
        self.on_flush = on_flush
        self.malformed = 0
        self.received = 0

    def handle(self, data: bytes) -> dict[str, Any] | None:
        """Take one message; returns it decoded (None when malformed, which is counted)."""
        message = decode(data)
        if message is None:
            self.malformed += 1
            self.ledger.count_dropped()
            if self.malformed in (1, 10, 100) or self.malformed % 1000 == 0:
                log.warning("report channel: %d malformed message(s) ignored so far", self.malformed)
            return None
        self.received += 1
        if message["kind"] == "tokens":
            self.ledger.add(
                message["job"],
                message["source"],
                message["prompt"],
                message["generated"],
                message["train"],
                active_s=message["active_s"],
                estimate_active=True,
            )
        elif message["kind"] == "scrape" and self.on_scrape is not None:
            self.on_scrape(message)
        return message

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Close the window now and wait until the server has it; False on timeout."""
        return self.on_flush(timeout_s) if self.on_flush is not None else False


class Listener:
    """Receives UDP datagrams on 127.0.0.1:``port`` in its own thread for ``channel``.

    When the port is taken the thread keeps trying to bind it every ``retry_s`` seconds
    (``bound`` says whether it listens now); only a port of 0 (pick one) fails at once.
    """

    def __init__(self, port: int, channel: Channel, retry_s: float = BIND_RETRY_S) -> None:
        self.channel = channel
        self.requested_port, self.retry_s = port, retry_s
        self.port = port
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hwprobe-report-udp", daemon=True)
        self._bind(log_failure=True)

    @property
    def bound(self) -> bool:
        return self._sock is not None

    def _bind(self, log_failure: bool = False) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", self.requested_port))
        except OSError as err:
            sock.close()
            if log_failure:
                log.error(
                    "report channel: cannot listen on udp 127.0.0.1:%d (%s); trying again every %.0f s "
                    "(the job worker and hwprobe.report use the Unix socket meanwhile)",
                    self.requested_port,
                    err,
                    self.retry_s,
                )
            return False
        sock.settimeout(0.5)
        self._sock = sock
        self.port = sock.getsockname()[1]
        return True

    def start(self) -> Listener:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock is None:
                if self._stop.wait(self.retry_s):
                    break
                if self._bind():
                    log.info("report channel on udp 127.0.0.1:%d (the port is free again)", self.port)
                continue
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
                self.channel.handle(data)
            except Exception:  # a bad datagram must never end the listener
                log.exception("report channel: could not handle a datagram")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()


class SocketListener:
    """Serves ``channel`` on a Unix stream socket at ``path`` (mode 0600) in one thread.

    Each connection carries newline-separated messages. A ``flush`` first reads whatever every
    other connection already delivered (a job's last report sits in the kernel when the worker
    asks), then waits for the server in a thread of its own and answers on its connection.
    """

    def __init__(self, path: str | os.PathLike[str], channel: Channel, mode: int = 0o600) -> None:
        self.path = Path(path)
        self.channel = channel
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()  # left by an agent that did not stop cleanly
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # no moment at which others could connect
        try:
            self._sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, mode)
        self._sock.listen(64)
        self._sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ, None)
        self._buffers: dict[socket.socket, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hwprobe-report-socket", daemon=True)

    def start(self) -> SocketListener:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._selector.select(0.5)
            except OSError:
                if self._stop.is_set():
                    break
                raise
            self._serve(events)

    def _serve(self, events: list[tuple[selectors.SelectorKey, int]], skip: socket.socket | None = None) -> None:
        for key, _ in events:
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if sock is self._sock:
                self._accept()
            elif sock is not skip:
                self._read(sock)

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, OSError):
            return
        if len(self._buffers) >= MAX_CONNECTIONS:
            self.channel.ledger.count_dropped()
            conn.close()
            return
        conn.setblocking(False)
        self._buffers[conn] = b""
        self._selector.register(conn, selectors.EVENT_READ, None)

    def _drop(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buffer = self._buffers.get(conn, b"") + data
        *lines, rest = buffer.split(b"\n")
        if len(rest) > MAX_DATAGRAM:
            self.channel.handle(rest)  # counted as malformed
            self._drop(conn)
            return
        self._buffers[conn] = rest
        for line in lines:
            if not line.strip():
                continue
            try:
                message = self.channel.handle(line)
            except Exception:
                log.exception("report channel: could not handle a message")
                continue
            if message is not None and message["kind"] == "flush":
                # What other senders already wrote belongs before the flush.
                self._serve(self._selector.select(0), skip=conn)
                threading.Thread(target=self._answer_flush, args=(conn,), daemon=True).start()

    def _answer_flush(self, conn: socket.socket) -> None:
        try:
            done = self.channel.flush()
        except Exception:
            log.exception("report channel: flush failed")
            done = False
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"v": 1, "flushed": done}).encode() + b"\n")

    def drain(self, timeout_s: float = 2.0) -> None:
        """Stop serving in the thread and read here what senders already wrote (a job's last
        report sits in the kernel after the job is gone), for up to ``timeout_s`` seconds."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events = self._selector.select(0)
            if not events:
                break
            self._serve(events)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        for conn in list(self._buffers):
            self._drop(conn)
        self._selector.close()
        self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class SocketClient:
    """A sender's connection to the agent's socket: reconnects as needed, never raises."""

    def __init__(self, path: str | os.PathLike[str], timeout_s: float = 1.0) -> None:
        self.path, self.timeout_s = str(path), timeout_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def send(self, *messages: bytes) -> bool:
        """Deliver messages to the agent; False (the caller keeps its counts) when it is not there."""
        data = b"".join(m + b"\n" for m in messages)
        with self._lock:
            for _ in range(2):  # a connection the agent closed (a restart) gets one reconnect
                try:
                    self._connect().sendall(data)
                    return True
                except OSError:
                    self._close()
            return False

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S + 1.0) -> bool:
        """Ask the agent to deliver everything sent so far to the server; True once it has."""
        with self._lock:
            try:
                sock = self._connect()
                sock.sendall(FLUSH_MESSAGE + b"\n")
                sock.settimeout(timeout_s)
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise OSError("the agent closed the connection")
                    reply += chunk
                sock.settimeout(self.timeout_s)
            except OSError:
                self._close()
                return False
        try:
            return json.loads(reply).get("flushed") is True
        except (ValueError, AttributeError):
            return False

    def close(self) -> None:
        with self._lock:
            self._close()
