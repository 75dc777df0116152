"""Report tokens from any program to the local agent: ``from hwprobe import report``.

::

    report.tokens(4096, kind="train")        # tokens trained on since the last call
    report.tokens(32, kind="generated")      # or "prompt"
    report.ollama(response_json)             # eval_count / prompt_eval_count of an Ollama reply

A call only adds to a counter in this process (no system call; about a microsecond); a daemon
thread sends what accumulated every half second (and once more at exit) as one UDP datagram per
job and source to the agent on ``127.0.0.1:$HWPROBE_REPORT_PORT`` (default 8791; the format is
in :mod:`hwprobe.channel`). The agent, never the server, receives it: with no agent running the
datagram is dropped, and the caller never waits or sees an error. The job defaults to
``$HWPROBE_JOB_ID``, which the hwprobe worker sets for every job it runs.

Only a wrong ``kind`` or a negative count raises (``ValueError``): those are programming errors.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
from typing import Any

from hwprobe import channel

FLUSH_S = 0.5
_INDEX = {"prompt": 0, "generated": 1, "train": 2}


def _env_job() -> int | None:
    raw = os.environ.get("HWPROBE_JOB_ID", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


_lock = threading.Lock()
_pending: dict[tuple[int | None, str], list[float]] = {}
_default_job = _env_job()
_thread: threading.Thread | None = None
_sock: socket.socket | None = None
sent_datagrams = 0  # for tests and the curious: datagrams that left this process


def tokens(n: float, kind: str = "train", job: int | None = None) -> None:
    """Count ``n`` tokens of ``kind`` ("train", "prompt" or "generated") for ``job``
    (default ``$HWPROBE_JOB_ID``; None there means outside any job)."""
    index = _INDEX.get(kind)
    if index is None:
        raise ValueError(f"kind must be 'train', 'prompt' or 'generated', not {kind!r}")
    if not n >= 0:
        raise ValueError(f"n must be a number of tokens >= 0, not {n!r}")
    key = (_default_job if job is None else job, "report")
    with _lock:
        row = _pending.get(key)
        if row is None:
            row = _pending[key] = [0, 0, 0]
            if _thread is None:
                _start()
        row[index] += n


def ollama(response: dict[str, Any], job: int | None = None) -> None:
    """Count the prompt and generated tokens of one Ollama API reply (``/api/generate`` or
    ``/api/chat``, the final chunk when streaming); replies without counts add nothing."""
    from hwprobe.engines.ollama import parse_response

    counts = parse_response(response)
    if counts is None:
        return
    key = (_default_job if job is None else job, "ollama")
    with _lock:
        row = _pending.setdefault(key, [0, 0, 0])
        row[0] += counts.prompt_tokens
        row[1] += counts.generated_tokens
        if _thread is None:
            _start()


def flush() -> int:
    """Send what accumulated now; returns the number of datagrams that left (0 without an agent port)."""
    global _pending, _sock, sent_datagrams
    with _lock:
        if not _pending:
            return 0
        batch, _pending = _pending, {}
    port = channel.port_from_env()
    if not port:
        return 0
    sent = 0
    for (job, source), (prompt, generated, train) in batch.items():
        data = channel.token_datagram(job, source, prompt, generated, train)
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
            flush()
        except Exception:  # noqa: BLE001 - reporting must never take down the caller's process
            pass


def _start() -> None:
    """Start the flushing thread (called under ``_lock`` on first use)."""
    global _thread
    _thread = threading.Thread(target=_loop, name="hwprobe-report", daemon=True)
    _thread.start()


def _after_fork() -> None:
    global _lock, _thread, _sock, _pending
    _lock, _thread, _sock, _pending = threading.Lock(), None, None, {}


atexit.register(flush)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
