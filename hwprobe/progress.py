"""Token counts from a job's output lines: the built-in progress line, presets, or a regex.

A job's ``progress_pattern`` is one of

* empty / ``hwprobe``: the built-in workloads' line (:mod:`hwprobe.workloads`): ``kind=train``
  gives ``tokens=`` (trained on), ``kind=serve`` gives ``prompt_tokens=`` and
  ``generated_tokens=``; all running totals;
* ``hf-trainer``: Hugging Face ``Trainer`` with ``include_num_input_tokens_seen=True``, whose log
  dicts (``{'loss': 2.31, ..., 'num_input_tokens_seen': 524288}``) carry a running total;
* ``lightning``: a Lightning progress bar showing a running total logged as ``tokens`` or
  ``train/tokens`` with ``prog_bar=True`` (tqdm prints ``tokens=5.24e+5``: three significant
  digits, so totals are that precise);
* ``nanogpt``: build-nanogpt / llm.c step lines (``... | dt: 812.40ms | tok/sec: 645388.21`` or
  ``step 1/74: train loss 11.01 (263.45 ms, 1990 tok/s)``): tokens of the step = time x rate
  (llm.c prints whole tokens/s, so a step comes out a fraction of a token short). Karpathy's original
  nanoGPT ``iter`` line has no token figure: use :mod:`hwprobe.report` or a regex there;
* any other text: a regular expression with a named group ``(?P<tokens>...)``, a running total
  of tokens, and optionally ``(?P<kind>train|prompt|generated)`` (default ``train``).

Running totals become deltas; a total that goes down (the program restarted its count) counts
as new tokens from zero. Lines are split on ``\\n`` and ``\\r`` (progress bars redraw with ``\\r``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Protocol

from hwprobe import channel
from hwprobe.workloads import parse_progress

log = logging.getLogger("hwprobe.worker")

KINDS = ("prompt", "generated", "train")
PRESETS = ("hwprobe", "hf-trainer", "lightning", "nanogpt")
_NUM = r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?"
PATTERNS = {
    "hf-trainer": rf"""['"]num_input_tokens_seen['"]\s*:\s*['"]?(?P<tokens>{_NUM})""",
    "lightning": rf"(?:^|[\s,|])(?:train/)?tokens=(?P<tokens>{_NUM})(?![0-9A-Za-z_])",
    "nanogpt": rf"(?:dt:\s*(?P<ms>{_NUM})\s*ms\s*\|\s*tok/sec:\s*(?P<rate>{_NUM})"
    rf"|\(\s*(?P<ms2>{_NUM})\s*ms,\s*(?P<rate2>{_NUM})\s*tok/s\))",
}


class Parser(Protocol):
    def feed(self, line: str) -> dict[str, float]:
        """Tokens per kind that ``line`` adds (empty when it is not a progress line)."""
        ...


class _Totals:
    """Running totals per kind -> what each new total adds."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def delta(self, kind: str, total: float) -> float:
        previous = self.last.get(kind, 0.0)
        self.last[kind] = total
        return total if total < previous else total - previous


class HwprobeParser:
    """The built-in workloads' ``HWPROBE_PROGRESS`` lines."""

    _FIELDS = {
        "train": (("tokens", "train"),),
        "serve": (("prompt_tokens", "prompt"), ("generated_tokens", "generated")),
    }

    def __init__(self) -> None:
        self.totals = _Totals()
        self.elapsed_s: float | None = None  # the workload's own clock at its latest line
        self.final: dict[str, float] | None = None  # the totals of the line marked final=1

    def feed(self, line: str) -> dict[str, float]:
        if "HWPROBE_PROGRESS" not in line:
            return {}
        fields = parse_progress(line)
        if not fields:
            return {}
        elapsed = fields.get("elapsed_s")
        if isinstance(elapsed, (int, float)) and elapsed >= 0:
            self.elapsed_s = float(elapsed)
        if fields.get("final") == 1:
            self.final = {
                kind: float(value)
                for key, kind in self._FIELDS.get(str(fields.get("kind")), ())
                if isinstance(value := fields.get(key), (int, float))
            }
        out: dict[str, float] = {}
        for key, kind in self._FIELDS.get(str(fields.get("kind")), ()):
            value = fields.get(key)
            if isinstance(value, (int, float)) and value >= 0:
                delta = self.totals.delta(kind, float(value))
                if delta:
                    out[kind] = delta
        return out


class RegexParser:
    """A running total in the ``tokens`` group (and the kind in an optional ``kind`` group)."""

    def __init__(self, pattern: str) -> None:
        self.regex = re.compile(pattern)
        if "tokens" not in self.regex.groupindex:
            raise ValueError("the pattern needs a named group (?P<tokens>...)")
        self.totals = _Totals()

    def feed(self, line: str) -> dict[str, float]:
        match = self.regex.search(line)
        if match is None or match.group("tokens") is None:
            return {}
        kind = "train"
        if "kind" in self.regex.groupindex and match.group("kind"):
            kind = match.group("kind").lower()
            if kind not in KINDS:
                return {}
        try:
            total = float(match.group("tokens"))
        except ValueError:
            return {}
        delta = self.totals.delta(kind, total)
        return {kind: delta} if delta else {}


class StepParser:
    """nanoGPT-style step lines: the step's tokens are its duration times its tokens/s."""

    def __init__(self) -> None:
        self.regex = re.compile(PATTERNS["nanogpt"])

    def feed(self, line: str) -> dict[str, float]:
        match = self.regex.search(line)
        if match is None:
            return {}
        ms = match.group("ms") or match.group("ms2")
        rate = match.group("rate") or match.group("rate2")
        tokens = float(ms) / 1000.0 * float(rate)
        return {"train": tokens} if tokens > 0 else {}


def make_parser(pattern: str | None) -> Parser:
    """The parser for a job's ``progress_pattern`` (None or "" -> the hwprobe line); ValueError
    for a regular expression that does not compile or has no ``tokens`` group."""
    if not pattern or pattern == "hwprobe":
        return HwprobeParser()
    if pattern == "nanogpt":
        return StepParser()
    try:
        return RegexParser(PATTERNS.get(pattern, pattern))
    except re.error as err:
        raise ValueError(f"not a valid regular expression: {err}") from None


class LineSplitter:
    """Cuts a stream of decoded text into lines at ``\\n`` and ``\\r``; keeps the unfinished tail."""

    MAX_LINE = 64 * 1024

    def __init__(self) -> None:
        self._tail = ""

    def feed(self, text: str) -> list[str]:
        parts = re.split(r"[\r\n]", self._tail + text)
        self._tail = parts.pop()[-self.MAX_LINE :]
        return [p for p in parts if p]

    def close(self) -> list[str]:
        tail, self._tail = self._tail, ""
        return [tail] if tail else []


_SERVING = re.compile(r"^serving on http://(\[[^\]]*\]|[^:/\s]+):(\d+)")


class Delivery:
    """Sends one job's counts to the agent: over its Unix socket when there is one (counts it
    cannot take yet stay here and go with the next send), else as UDP datagrams."""

    def __init__(self, job_id: int, port: int, socket_path: str | None) -> None:
        self.job_id, self.port = job_id, port
        self.client = channel.SocketClient(socket_path) if socket_path else None
        self._lock = threading.Lock()
        self._unsent: dict[str, list[float]] = {}  # source -> [prompt, generated, train, active_s]

    def send(self, source: str, counts: dict[str, float], active_s: float | None, last_try: bool = False) -> None:
        """Count ``counts`` (per kind) of ``source`` produced over ``active_s`` seconds."""
        with self._lock:
            row = self._unsent.setdefault(source, [0.0, 0.0, 0.0, 0.0])
            for i, kind in enumerate(KINDS):
                row[i] += counts.get(kind, 0.0)
            row[3] += active_s or 0.0
            self._deliver(last_try)

    def _deliver(self, last_try: bool) -> None:
        if not self._unsent:
            return
        messages = [
            channel.token_datagram(self.job_id, source, p, g, t, active_s=active or None)
            for source, (p, g, t, active) in self._unsent.items()
        ]
        if self.client is not None and self.client.send(*messages):
            self._unsent.clear()
            return
        if self.client is None or last_try:
            # UDP: fire and forget. With a socket configured, only when the job has ended and
            # the socket still cannot be reached (better a datagram than nothing).
            for data in messages:
                channel.send(data, self.port)
            self._unsent.clear()

    def flush(self) -> bool:
        """Send what is left, then have the agent deliver it to the server; True once it has."""
        with self._lock:
            self._deliver(last_try=True)
        return self.client.flush() if self.client is not None else False

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


STARTUP_S = 60.0


class JobScrape:
    """A job's Prometheus endpoint, scraped by the worker every ``interval_s`` for the job's
    lifetime, and once more right before the worker stops the job and after it ended.

    The tokens between two scrapes count as produced over the time between them, except at the
    edges of a busy stretch, which count at the rate of the interval next to them
    (:class:`hwprobe.engines.prometheus.Stretch`, shared with the agent's scraper); so each
    interval's counts leave one scrape later, when it is known whether the stretch went on.
    Idle intervals (no new tokens) do not count. The first try is made at once:
    an endpoint that does not answer yet belongs to an engine the job itself is starting, whose
    counters start at zero, so its first answer counts in full rather than as a baseline.
    """

    def __init__(
        self,
        url: str,
        engine: str,
        from_zero: bool,
        send: Any,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        from hwprobe.engines.prometheus import Stretch, Target

        self.target = Target(url, None, engine, from_zero)
        self.url, self.send, self.interval_s, self.timeout_s = url, send, interval_s, timeout_s
        self._lock = threading.Lock()
        self._last_ok: float | None = time.monotonic() if from_zero else None
        self._answered = False
        self._created = time.monotonic()
        self._stretch = Stretch(lambda deltas, active_s, _at: self.send(deltas, active_s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hwprobe-job-scrape", daemon=True)

    def start(self) -> JobScrape:
        self._thread.start()
        return self

    def scrape(self, quiet: bool = False) -> dict[str, float]:
        """Scrape once now and send what it found; returns the deltas."""
        with self._lock:
            # An engine takes a while to come up: say it does not answer only after STARTUP_S.
            starting = not self._answered and time.monotonic() - self._created < STARTUP_S
            deltas = self.target.scrape(self.timeout_s, quiet=quiet or starting)
            now = time.monotonic()
            if self.target.failing:
                if not self._answered:  # not up yet: the job is starting it
                    self.target.rate.from_zero = True
                    self._last_ok = now
                return {}
            self._answered = True
            span = now - self._last_ok if (deltas and self._last_ok is not None) else None
            self._last_ok = now
            self._stretch.add(deltas, span)
            return deltas

    def flush(self) -> None:
        """Send the interval held back (the job has ended: it was the stretch's last)."""
        with self._lock:
            self._stretch.end()

    def settle(self, totals: dict[str, float], at: float) -> None:
        """Count what the engine said it produced in all (its last counter values, printed after
        its last scrape) beyond what the scrapes saw."""
        with self._lock:
            rest = {k: v - self.target.rate.last.get(k, 0.0) for k, v in totals.items() if k in ("prompt", "generated")}
            rest = {k: v for k, v in rest.items() if v > 0}
            if rest:  # the engine went on producing until its final line: one more interval
                span = at - self._last_ok if self._last_ok is not None else None
                for kind, value in rest.items():
                    self.target.rate.last[kind] = self.target.rate.last.get(kind, 0.0) + value
                self._last_ok = at
                self._stretch.add(rest, span)

    def _run(self) -> None:
        while True:
            try:
                self.scrape()
            except Exception:  # one bad scrape must not end the job's counting
                log.exception("scrape %s: unexpected error", self.url)
            if self._stop.wait(self.interval_s):
                break

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 1)


class JobMeter:
    """Reads one job's output for tokens and tells the local agent (:mod:`hwprobe.channel`).

    Progress-line counts go as source ``progress``, each with the seconds of work it covers: the
    difference of the workload's own ``elapsed_s`` for the built-in line, else the time since the
    previous counted line (since the job started, for the first). A job with a Prometheus endpoint
    (``metrics_url``, or the built-in ``serve``, whose first line names its port) is scraped by
    this meter (:class:`JobScrape`) as source ``prometheus``; the same kinds in its progress lines
    are not sent again. When the job ends, :meth:`finish` scrapes a last time, counts the built-in
    serve's final totals, sends what is left and waits (a few seconds at most) until the agent
    has delivered everything to the server.
    """

    def __init__(
        self,
        job_id: int,
        pattern: str | None,
        metrics_url: str | None = None,
        builtin_serve: bool = False,
        port: int | None = None,
        socket_path: str | None = "",
        scrape_interval_s: float = 1.0,
    ) -> None:
        self.job_id, self.port = job_id, channel.port_from_env() if port is None else port
        self.parser = make_parser(pattern)
        self.metrics_url = metrics_url
        self.builtin_serve = builtin_serve and not metrics_url
        self.scraped: str | None = None  # the URL scraped for this job
        self.scrape: JobScrape | None = None
        self.scrape_interval_s = scrape_interval_s
        self.sent: dict[str, float] = {k: 0.0 for k in KINDS}  # what left as source "progress"
        self.delivery = Delivery(job_id, self.port, channel.socket_from_env() if socket_path == "" else socket_path)
        self._splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        self._lock = threading.Lock()
        self._started = self._last_line = time.monotonic()
        self._last_elapsed: float | None = None
        self.delivered = False
        self._final_at: float | None = None

    def start(self) -> None:
        """Start scraping ``metrics_url`` (if any)."""
        if self.metrics_url:
            self._scrape(self.metrics_url, "auto", from_zero=False)

    def _scrape(self, url: str, engine: str, from_zero: bool) -> None:
        self.scraped = url
        try:
            self.scrape = JobScrape(
                url,
                engine,
                from_zero,
                lambda deltas, span: self.delivery.send("prometheus", deltas, span),
                interval_s=self.scrape_interval_s,
            ).start()
        except ValueError as err:
            log.warning("job %s: metrics_url not scraped: %s", self.job_id, err)

    def feed(self, stream: str, text: str) -> None:
        """Take decoded output of ``stream`` ("stdout" or "stderr") as it comes."""
        for line in self._splitters[stream].feed(text):
            self._line(stream, line)

    def close(self, stream: str) -> None:
        for line in self._splitters[stream].close():
            self._line(stream, line)

    def _line(self, stream: str, line: str) -> None:
        with self._lock:  # stdout and stderr are read by two threads
            if self.builtin_serve and self.scraped is None and stream == "stdout":
                match = _SERVING.match(line)
                if match:
                    host = match.group(1)
                    host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host
                    # The server starts with the job, so its counters start at zero: count in full.
                    self._scrape(f"http://{host}:{match.group(2)}/metrics", "hwprobe", from_zero=True)
                    return
            counts = self.parser.feed(line)
            if self._final_at is None and getattr(self.parser, "final", None):
                self._final_at = time.monotonic()  # when the engine's last counter values were printed
            if self.scraped:
                counts = {k: v for k, v in counts.items() if k == "train"}
            if not counts:
                return
            now = time.monotonic()
            elapsed = getattr(self.parser, "elapsed_s", None)
            if elapsed is not None:
                span = elapsed - (self._last_elapsed or 0.0)
                self._last_elapsed = elapsed
            else:
                span = now - self._last_line
            self._last_line = now
            for kind, value in counts.items():
                self.sent[kind] += value
            self.delivery.send("progress", counts, span if span > 0 else None)

    def stopping(self) -> None:
        """The worker is about to stop the job: read its engine's counters while it still answers."""
        if self.scrape is not None:
            self.scrape.scrape()

    def finish(self) -> None:
        """After the job ended and its output was read: the last scrape, the rest of the counts,
        and the agent's delivery to the server (``delivered`` says whether the server has them)."""
        if self.scrape is not None:
            self.scrape.stop()
            self.scrape.scrape(quiet=True)  # an engine that outlives its job's command
            final = getattr(self.parser, "final", None)
            if final and self.scrape.target.rate.from_zero:
                self.scrape.settle(final, self._final_at or time.monotonic())
            self.scrape.flush()
        self.delivered = self.delivery.flush()
        self.delivery.close()
