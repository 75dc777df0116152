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

import re
from typing import Protocol

from hwprobe import channel
from hwprobe.workloads import parse_progress

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

    def feed(self, line: str) -> dict[str, float]:
        if "HWPROBE_PROGRESS" not in line:
            return {}
        fields = parse_progress(line)
        if not fields:
            return {}
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


class JobMeter:
    """Reads one job's output for tokens and tells the local agent (:mod:`hwprobe.channel`).

    Progress-line counts go as source ``progress``. A job with a Prometheus endpoint
    (``metrics_url``, or the built-in ``serve``, whose first line names its port) has that
    endpoint registered with the agent for the job's lifetime; its prompt and generated tokens
    then come from the scrapes, and the same kinds in its progress lines are not sent again.
    """

    def __init__(
        self,
        job_id: int,
        pattern: str | None,
        metrics_url: str | None = None,
        builtin_serve: bool = False,
        port: int | None = None,
    ) -> None:
        self.job_id, self.port = job_id, channel.port_from_env() if port is None else port
        self.parser = make_parser(pattern)
        self.metrics_url = metrics_url
        self.builtin_serve = builtin_serve and not metrics_url
        self.scraped: str | None = None  # the URL registered for this job
        self.sent: dict[str, float] = {k: 0.0 for k in KINDS}  # what left as source "progress"
        self._splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}

    def start(self) -> None:
        """Register ``metrics_url`` (if any) with the agent."""
        if self.metrics_url:
            self._register(self.metrics_url, "auto", from_zero=False)

    def _register(self, url: str, engine: str, from_zero: bool) -> None:
        self.scraped = url
        if self.port:
            channel.send(channel.scrape_datagram(url, self.job_id, engine, from_zero=from_zero), self.port)

    def feed(self, stream: str, text: str) -> None:
        """Take decoded output of ``stream`` ("stdout" or "stderr") as it comes."""
        for line in self._splitters[stream].feed(text):
            self._line(stream, line)

    def close(self, stream: str) -> None:
        for line in self._splitters[stream].close():
            self._line(stream, line)

    def _line(self, stream: str, line: str) -> None:
        if self.builtin_serve and self.scraped is None and stream == "stdout":
            match = _SERVING.match(line)
            if match:
                host = match.group(1)
                host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host
                # The server starts with the job, so its counters start at zero: count in full.
                self._register(f"http://{host}:{match.group(2)}/metrics", "hwprobe", from_zero=True)
                return
        counts = self.parser.feed(line)
        if self.scraped:
            counts = {k: v for k, v in counts.items() if k == "train"}
        if counts:
            for kind, value in counts.items():
                self.sent[kind] += value
            if self.port:
                channel.send(channel.token_datagram(self.job_id, "progress", **counts), self.port)

    def finish(self) -> None:
        """Unregister the job's endpoint (the agent scrapes it no more)."""
        if self.scraped and self.port:
            channel.send(channel.scrape_datagram(self.scraped, self.job_id, stop=True), self.port)
