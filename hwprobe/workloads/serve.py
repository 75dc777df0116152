"""``python -m hwprobe.workloads serve``: answer generation requests with a minGRU model.

* ``POST /generate`` ``{"prompt": str, "max_tokens": int, "temperature": float?}`` →
  ``{"text", "prompt_tokens", "generated_tokens"}`` (one token is one character);
* ``GET /metrics``: Prometheus text exposition, with counters named as serving engines name
  theirs (``hwprobe_serve_prompt_tokens_total``, ``hwprobe_serve_generated_tokens_total``,
  ``hwprobe_serve_requests_total``...);
* ``GET /healthz``: ``ok``.

``--load N`` starts N loops that each send requests back to back, so the workload measures
itself. A progress line (format in :mod:`hwprobe.workloads`) is printed about once a second;
the first line of output is ``serving on http://HOST:PORT`` (useful with ``--port 0``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from hwprobe.workloads import mingru, progress_line
from hwprobe.workloads.train import DEFAULT_TEXT

MAX_PROMPT_CHARS = 8192
MAX_TOKENS = 4096


class Metrics:
    """Counters since the start, safe to update from many request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.prompt_tokens = self.generated_tokens = self.errors = 0
        self.request_seconds = 0.0
        self.in_flight = 0

    def exposition(self) -> str:
        """Prometheus text format 0.0.4."""
        with self.lock:
            rows = [
                ("hwprobe_serve_requests_total", "counter", "Generation requests answered.", self.requests),
                ("hwprobe_serve_prompt_tokens_total", "counter", "Prompt tokens processed.", self.prompt_tokens),
                ("hwprobe_serve_generated_tokens_total", "counter", "Tokens generated.", self.generated_tokens),
                ("hwprobe_serve_request_errors_total", "counter", "Requests refused as malformed.", self.errors),
                (
                    "hwprobe_serve_request_seconds_total",
                    "counter",
                    "Time spent answering requests, in seconds.",
                    round(self.request_seconds, 6),
                ),
                ("hwprobe_serve_requests_in_flight", "gauge", "Requests being answered now.", self.in_flight),
            ]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"


class Model:
    """A loaded model and the generation call the handlers share (parameters are read-only)."""

    def __init__(self, params: dict[str, np.ndarray], cfg: mingru.Config) -> None:
        self.params, self.cfg = params, cfg

    def generate(self, prompt: str, max_tokens: int, temperature: float) -> tuple[str, int, int]:
        """(text, prompt tokens, generated tokens)."""
        ids = mingru.encode(self.cfg, prompt)
        out = mingru.generate(self.params, self.cfg, ids, max_tokens, temperature)
        return mingru.decode(self.cfg, out), len(ids), len(out)


def _handler(model: Model, metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for the load loops

        def setup(self) -> None:
            super().setup()
            # Headers and body leave in two writes: without this, Nagle's algorithm and delayed
            # ACKs add 40 ms to every keep-alive response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: dict[str, Any]) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/metrics":
                self._send(200, metrics.exposition().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            else:
                self._json(404, {"error": "not found: use POST /generate, GET /metrics or GET /healthz"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/generate":
                self._json(404, {"error": "not found: use POST /generate"})
                return
            started = time.monotonic()
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > 65536:
                    raise ValueError("body larger than 64 KiB")
                body = json.loads(self.rfile.read(length) or b"null")
                prompt, max_tokens, temperature = _parse(body)
            except ValueError as err:
                with metrics.lock:
                    metrics.errors += 1
                self._json(400, {"error": str(err)})
                return
            with metrics.lock:
                metrics.in_flight += 1
            try:
                text, n_prompt, n_out = model.generate(prompt, max_tokens, temperature)
            finally:
                with metrics.lock:
                    metrics.in_flight -= 1
            with metrics.lock:
                metrics.requests += 1
                metrics.prompt_tokens += n_prompt
                metrics.generated_tokens += n_out
                metrics.request_seconds += time.monotonic() - started
            self._json(200, {"text": text, "prompt_tokens": n_prompt, "generated_tokens": n_out})

        def log_message(self, *args: Any) -> None:
            pass  # one line per request would drown the progress lines

    return Handler


def _parse(body: Any) -> tuple[str, int, float]:
    """(prompt, max_tokens, temperature) from a request body; ValueError names the bad field."""
    if not isinstance(body, dict):
        raise ValueError('the body must be a JSON object like {"prompt": "...", "max_tokens": 32}')
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    max_tokens = body.get("max_tokens", 64)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 0 <= max_tokens <= MAX_TOKENS:
        raise ValueError(f"max_tokens must be an integer from 0 to {MAX_TOKENS}")
    temperature = body.get("temperature", 0.8)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 10:
        raise ValueError("temperature must be a number from 0 to 10")
    return prompt, max_tokens, float(temperature)


def _load_loop(port: int, stop: threading.Event, text: str, max_tokens: int, seed: int) -> None:
    """Send requests back to back until ``stop``; prompts are random slices of ``text``."""
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        start = int(rng.integers(0, max(1, len(text) - 64)))
        prompt = text[start : start + int(rng.integers(16, 64))]
        try:
            conn.request(
                "POST",
                "/generate",
                body=json.dumps({"prompt": prompt, "max_tokens": max_tokens}),
                headers={"Content-Type": "application/json"},
            )
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            stop.wait(0.1)
    conn.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hwprobe.workloads serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model saved by train (default: a fresh small one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to serve (0: until stopped)")
    p.add_argument("--load", type=int, default=0, help="concurrent request loops sent to itself")
    p.add_argument("--load-tokens", type=int, default=32, help="max_tokens of each load request")
    p.add_argument("--report-every", type=float, default=1.0, help="seconds between progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Serve until ``--seconds`` pass or a signal arrives; returns the exit status."""
    args = _parser().parse_args(argv)
    text = DEFAULT_TEXT.read_text(encoding="utf-8")
    if args.model and Path(args.model).exists():
        params, cfg, _ = mingru.load(args.model)
        source = args.model
    elif args.model:
        print(f"no model at {args.model}", file=sys.stderr)
        return 2
    else:
        cfg = mingru.Config("".join(sorted(set(text))), dim=64, hidden=128, layers=2)
        params, source = mingru.init_params(cfg, 0), "a fresh untrained model"
    metrics = Metrics()
    server = ThreadingHTTPServer((args.host, args.port), _handler(Model(params, cfg), metrics))
    server.daemon_threads = True
    port = server.server_address[1]
    print(f"serving on http://{args.host}:{port} with {source}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    serving.start()
    loops = [
        threading.Thread(target=_load_loop, args=(port, stop, text, args.load_tokens, i), daemon=True)
        for i in range(max(0, args.load))
    ]
    for loop in loops:
        loop.start()

    start = last = time.monotonic()
    last_generated = 0
    while not stop.wait(max(0.05, min(args.report_every, last + args.report_every - time.monotonic()))):
        now = time.monotonic()
        if now - last >= args.report_every:
            with metrics.lock:
                requests, prompt, generated = metrics.requests, metrics.prompt_tokens, metrics.generated_tokens
            print(
                progress_line(
                    "serve",
                    requests=requests,
                    prompt_tokens=prompt,
                    generated_tokens=generated,
                    elapsed_s=now - start,
                    tokens_per_s=(generated - last_generated) / (now - last),
                ),
                flush=True,
            )
            last, last_generated = now, generated
        if args.seconds and now - start >= args.seconds:
            break
    stop.set()
    for loop in loops:
        loop.join(5)
    server.shutdown()
    server.server_close()
    elapsed = time.monotonic() - start
    with metrics.lock:
        requests, prompt, generated = metrics.requests, metrics.prompt_tokens, metrics.generated_tokens
    print(
        progress_line(
            "serve",
            requests=requests,
            prompt_tokens=prompt,
            generated_tokens=generated,
            elapsed_s=elapsed,
            tokens_per_s=generated / elapsed if elapsed > 0 else 0.0,
            final=1,
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
