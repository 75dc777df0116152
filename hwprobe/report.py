"""Report tokens from any program to the local agent: ``from hwprobe import report``.

::

    report.tokens(4096, kind="train")        # tokens trained on since the last call
    report.tokens(32, kind="generated")      # or "prompt"
    report.tokens(4096, seconds=0.21)        # and how long producing them took, when known
    report.ollama(response_json)             # eval_count / prompt_eval_count of an Ollama reply

A call only adds to a counter in this process (no system call; about a microsecond); a daemon
thread sends what accumulated every half second (and once more at exit) to the agent
(:mod:`hwprobe.channel`): over its Unix socket when ``$HWPROBE_REPORT_SOCKET`` names one (the
worker sets it for every job) or the agent's default socket is there, else as UDP datagrams to
``127.0.0.1:$HWPROBE_REPORT_PORT`` (default 8791). Over the socket nothing is lost: counts the
agent could not take yet stay here and go with the next send. Over UDP, with no agent listening,
they are dropped; the caller never waits or sees an error either way. The job defaults to
``$HWPROBE_JOB_ID``, which the hwprobe worker sets for every job it runs.

Rates are taken over the time the program was producing: a call's tokens count as produced since
the previous call (``seconds`` overrides that); the first call's own duration is taken as that of
the calls after it, or the time since this module was imported when it is the only one.

Only a wrong ``kind`` or a negative count raises (``ValueError``): those are programming errors.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
from typing import Any

from hwprobe import channel

FLUSH_S = 0.5
HOLD_FIRST_S = 2.0  # then it goes with the time since import
_INDEX = {"prompt": 0, "generated": 1, "train": 2}
_IMPORTED_AT = time.monotonic()


def _env_job() -> int | None:
    raw = os.environ.get("HWPROBE_JOB_ID", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


class _Pending:
    """Counts of one (job, source) not yet sent, and the seconds of work they took."""

    __slots__ = ("counts", "active_s", "calls", "first_unknown")

    def __init__(self) -> None:
        self.counts = [0.0, 0.0, 0.0]
        self.active_s = 0.0
        self.calls = 0  # calls whose duration is known
        self.first_unknown = False  # the stream's first call, whose duration is estimated at send

    def merge(self, other: _Pending) -> None:
        for i in range(3):
            self.counts[i] += other.counts[i]
        self.active_s += other.active_s
        self.calls += other.calls
        self.first_unknown = self.first_unknown or other.first_unknown

    def seconds(self, now: float) -> float:
        if not self.first_unknown:
            return self.active_s
        if self.calls:
            return self.active_s + self.active_s / self.calls
        return now - _IMPORTED_AT


_lock = threading.Lock()
_pending: dict[tuple[int | None, str], _Pending] = {}
_last_call: dict[tuple[int | None, str], float] = {}
_default_job = _env_job()
_thread: threading.Thread | None = None
_sock: socket.socket | None = None
_client: channel.SocketClient | None = None
sent_datagrams = 0  # for tests and the curious: messages that left this process


def _add(key: tuple[int | None, str], counts: tuple[float, float, float], seconds: float | None) -> None:
    """Add under ``_lock``: the counts and how long they took (``seconds``, else since the last call)."""
    now = time.monotonic()
    row = _pending.get(key)
    if row is None:
        row = _pending[key] = _Pending()
        if _thread is None:
            _start()
    for i in range(3):
        row.counts[i] += counts[i]
    previous = _last_call.get(key)
    _last_call[key] = now
    if seconds is not None:
        row.active_s += seconds
        row.calls += 1
    elif previous is None:
        row.first_unknown = True
    else:
        row.active_s += now - previous
        row.calls += 1


def tokens(n: float, kind: str = "train", job: int | None = None, seconds: float | None = None) -> None:
    """Count ``n`` tokens of ``kind`` ("train", "prompt" or "generated") for ``job``
    (default ``$HWPROBE_JOB_ID``; None there means outside any job), produced over ``seconds``
    (default: since the previous call)."""
    index = _INDEX.get(kind)
    if index is None:
        raise ValueError(f"kind must be 'train', 'prompt' or 'generated', not {kind!r}")
    if not n >= 0:
        raise ValueError(f"n must be a number of tokens >= 0, not {n!r}")
    if seconds is not None and not seconds >= 0:
        raise ValueError(f"seconds must be >= 0, not {seconds!r}")
    counts = [0.0, 0.0, 0.0]
    counts[index] = n
    with _lock:
        _add((_default_job if job is None else job, "report"), (counts[0], counts[1], counts[2]), seconds)


def ollama(response: dict[str, Any], job: int | None = None) -> None:
    """Count the prompt and generated tokens of one Ollama API reply (``/api/generate`` or
    ``/api/chat``, the final chunk when streaming); replies without counts add nothing.
    The reply's own ``eval_duration`` is the time it took."""
    from hwprobe.engines.ollama import parse_response

    counts = parse_response(response)
    if counts is None:
        return
    seconds = None
    duration_ns = response.get("eval_duration")
    if isinstance(duration_ns, int) and duration_ns > 0:
        seconds = (duration_ns + (response.get("prompt_eval_duration") or 0)) / 1e9
    with _lock:
        _add(
            (_default_job if job is None else job, "ollama"),
            (counts.prompt_tokens, counts.generated_tokens, 0.0),
            seconds,
        )


def _socket_client() -> channel.SocketClient | None:
    global _client
    path = channel.socket_from_env()
    if path is None:
        return None
    if _client is None or _client.path != path:
        _client = channel.SocketClient(path)
    return _client


def flush() -> int:
    """Send what accumulated now; returns the number of messages that left (0 without an agent)."""
    return _flush(hold_first=False)


def _flush(hold_first: bool) -> int:
    global _pending, _sock, sent_datagrams
    now = time.monotonic()
    with _lock:
        if not _pending:
            return 0
        batch, _pending = _pending, {}
        if hold_first:
            # A stream's lone first call has no duration yet: the next call gives one (its gap).
            for key, row in list(batch.items()):
                if row.first_unknown and not row.calls and now - _last_call.get(key, now) < HOLD_FIRST_S:
                    _pending[key] = batch.pop(key)
            if not batch:
                return 0
    messages = [
        channel.token_datagram(job, source, row.counts[0], row.counts[1], row.counts[2], active_s=row.seconds(now))
        for (job, source), row in batch.items()
    ]
    client = _socket_client()
    if client is not None:
        if client.send(*messages):
            sent_datagrams += len(messages)
            return len(messages)
        # The agent is not there (yet, or restarting): keep the counts for the next send.
        with _lock:
            for key, row in batch.items():
                newer = _pending.get(key)
                _pending[key] = row
                if newer is not None:
                    row.merge(newer)
        return 0
    port = channel.port_from_env()
    if not port:
        return 0
    sent = 0
    for data in messages:
        try:
            if _sock is None:
                _sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                _sock.setblocking(False)
            _sock.sendto(data, ("127.0.0.1", port))
            sent += 1
        except OSError:
            pass  # no agent, a full buffer: the counts are dropped, never the caller
    sent_datagrams += sent
    return sent


def _loop() -> None:
    stop = threading.Event()
    while True:
        stop.wait(FLUSH_S)
        try:
            _flush(hold_first=True)
        except Exception:  # noqa: BLE001 - reporting must never take down the caller's process
            pass


def _start() -> None:
    """Start the flushing thread (called under ``_lock`` on first use)."""
    global _thread
    _thread = threading.Thread(target=_loop, name="hwprobe-report", daemon=True)
    _thread.start()


def _after_fork() -> None:
    global _lock, _thread, _sock, _pending, _client, _last_call
    _lock, _thread, _sock, _pending, _client, _last_call = threading.Lock(), None, None, {}, None, {}


atexit.register(flush)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
