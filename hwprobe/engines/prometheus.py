"""Prompt and generated token counters from a serving engine's Prometheus ``/metrics``.

Each engine exposes running totals under its own names (summed over label sets, e.g. one per
``model_name``):

==========  =====================================  ==========================================
engine      prompt tokens                          generated tokens
==========  =====================================  ==========================================
vllm        ``vllm:prompt_tokens_total``           ``vllm:generation_tokens_total``
llamacpp    ``llamacpp:prompt_tokens_total``       ``llamacpp:tokens_predicted_total``
sglang      ``sglang:prompt_tokens_total``         ``sglang:generation_tokens_total``
tgi         ``tgi_request_input_length_sum``       ``tgi_request_generated_tokens_sum``
hwprobe     ``hwprobe_serve_prompt_tokens_total``  ``hwprobe_serve_generated_tokens_total``
==========  =====================================  ==========================================

TGI has no token counters: the sums of its per-request histograms grow as requests finish, so
its rate comes in steps at request ends. ``auto`` picks the engine from the first sample name
with a known prefix. Only the few sample lines we need are parsed (:func:`parse_sample`, checked
against ``prometheus_client``'s parser on every capture in the tests), one by one, so a malformed
line elsewhere costs nothing and a malformed token line costs only itself; matching is on sample
names, which keep ``_total`` where family names lose it.

:class:`CounterRate` turns successive totals into tokens produced between scrapes: a total
that went down (a counter reset) or a new ``process_start_time_seconds`` (an engine restart)
counts the new total as what was produced since; the first scrape only sets the baseline unless
the counters are known to have started with the job (``from_zero``). :class:`Stretch` says how
many of the seconds between two scrapes the engine was producing.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from hwprobe import http_client

log = logging.getLogger("hwprobe")

KINDS = ("prompt", "generated")
ENGINES: dict[str, dict[str, str]] = {
    "vllm": {"prompt": "vllm:prompt_tokens_total", "generated": "vllm:generation_tokens_total"},
    "llamacpp": {"prompt": "llamacpp:prompt_tokens_total", "generated": "llamacpp:tokens_predicted_total"},
    "sglang": {"prompt": "sglang:prompt_tokens_total", "generated": "sglang:generation_tokens_total"},
    "tgi": {"prompt": "tgi_request_input_length_sum", "generated": "tgi_request_generated_tokens_sum"},
    "hwprobe": {"prompt": "hwprobe_serve_prompt_tokens_total", "generated": "hwprobe_serve_generated_tokens_total"},
}
_PREFIXES = (
    ("vllm:", "vllm"),
    ("llamacpp:", "llamacpp"),
    ("sglang:", "sglang"),
    ("tgi_", "tgi"),
    ("hwprobe_serve_", "hwprobe"),
)
_SAMPLE_LINE = re.compile(r"^(vllm:|llamacpp:|sglang:|tgi_|hwprobe_serve_)", re.MULTILINE)
START_TIME = "process_start_time_seconds"
MAX_BODY = 8 * 1024 * 1024
ENGINE_NAMES = ("auto", *ENGINES)


@dataclass
class Reading:
    """One scrape: the engine, its totals (None where missing or unreadable) and what went wrong."""

    engine: str | None
    totals: dict[str, float | None]
    start_time: float | None = None
    problems: list[str] = field(default_factory=list)


def detect(text: str) -> str | None:
    """The engine whose metric names appear first in ``text``, or None."""
    match = _SAMPLE_LINE.search(text)
    if match is None:
        return None
    return dict(_PREFIXES)[match.group(1)]


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def parse_sample(line: str) -> tuple[str, float]:
    """(name, value) of one sample line of the text exposition format; ValueError if malformed.

    Labels are skipped (we sum over them), respecting quoted values with escapes; an optional
    timestamp and an OpenMetrics exemplar after the value are ignored. ``NaN``, ``+Inf`` and
    llama.cpp's ``-nan`` come back as floats.
    """
    match = _NAME.match(line)
    if match is None:
        raise ValueError("no metric name")
    i = match.end()
    if i < len(line) and line[i] == "{":
        i += 1
        quoted = False
        while i < len(line):
            char = line[i]
            if quoted:
                if char == "\\":
                    i += 1
                elif char == '"':
                    quoted = False
            elif char == '"':
                quoted = True
            elif char == "}":
                break
            i += 1
        else:
            raise ValueError("unterminated label set")
        i += 1
    rest = line[i:]
    if not rest[:1].isspace():
        raise ValueError("no space before the value")
    fields = rest.split()
    if not fields:
        raise ValueError("no value")
    return match.group(0), float(fields[0])


def _samples(text: str, wanted: set[str], problems: list[str]) -> list[tuple[str, float]]:
    """(name, value) of the samples named in ``wanted``; a malformed line costs only itself."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] == "#":
            continue
        head = _NAME.match(line)
        if head is None or head.group(0) not in wanted:
            continue
        try:
            found.append(parse_sample(line))
        except ValueError as err:
            problems.append(f"skipped a malformed line ({err}): {line[:120]!r}")
    return found


def parse(text: str, engine: str = "auto") -> Reading:
    """The token totals in one ``/metrics`` text of ``engine`` ("auto": detect it)."""
    problems: list[str] = []
    name = detect(text) if engine == "auto" else engine
    if name not in ENGINES:
        problem = "no known engine's metrics found" if engine == "auto" else f"unknown engine {engine!r}"
        return Reading(None, {k: None for k in KINDS}, problems=[problem])
    names = ENGINES[name]
    sums: dict[str, float] = {}
    bad: set[str] = set()
    start_time = None
    for sample, value in _samples(text, {*names.values(), START_TIME}, problems):
        if sample == START_TIME:
            start_time = value if math.isfinite(value) else None
        elif not math.isfinite(value) or value < 0:
            bad.add(sample)
        else:
            sums[sample] = sums.get(sample, 0.0) + value
    totals: dict[str, float | None] = {}
    for kind, sample in names.items():
        if sample in bad:
            problems.append(f"{sample} is not a finite count: skipped")
            totals[kind] = None
        elif sample not in sums:
            problems.append(f"{sample} is missing")
            totals[kind] = None
        else:
            totals[kind] = sums[sample]
    return Reading(name, totals, start_time, problems)


class CounterRate:
    """Tokens produced between successive readings of running totals."""

    def __init__(self, from_zero: bool = False) -> None:
        self.from_zero = from_zero
        self.last: dict[str, float] = {}
        self.start_time: float | None = None

    def update(self, totals: dict[str, float | None], start_time: float | None = None) -> dict[str, float]:
        """Deltas since the previous reading per kind (missing totals keep their last value)."""
        restarted = start_time is not None and self.start_time is not None and start_time != self.start_time
        if start_time is not None:
            self.start_time = start_time
        deltas: dict[str, float] = {}
        for kind, value in totals.items():
            if value is None:
                continue
            previous = self.last.get(kind)
            if previous is None:
                delta = value if self.from_zero else 0.0
            elif restarted or value < previous:
                delta = value  # the counter started again from zero since the last reading
            else:
                delta = value - previous
            self.last[kind] = value
            if delta > 0:
                deltas[kind] = delta
        return deltas


# What a Stretch hands on: the interval's tokens per kind, its seconds of work (None: unknown),
# and when it ended (Unix s, None: not said).
Emit = Callable[[dict[str, float], float | None, float | None], None]


class Stretch:
    """The seconds of work behind each interval between two scrapes of one endpoint.

    A scrape says how many tokens the engine produced since the previous one, not when. Inside a
    busy stretch (successive intervals that each saw new tokens) the engine worked throughout; in
    the stretch's first interval it started somewhere inside, in its last one it stopped. So an
    edge interval counts the time its tokens take at the rate of its neighbour in the stretch, at
    most its length: ``min(span, tokens / neighbour_rate)`` (in a stretch of two, each is the
    other's neighbour: the faster one counts in full). Whether an interval is the last is known only
    at the next scrape, so each interval is held until then and handed to ``emit`` one scrape
    late; :meth:`end` hands over the one held when no scrape follows (the final scrape, a failed
    one, closing). Totals are never changed, only the time they count over.
    """

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        # (tokens per kind, span, ended at, first of its stretch, rate of the interval before)
        self._held: tuple[dict[str, float], float | None, float | None, bool, float | None] | None = None
        self._busy = False  # the latest interval saw tokens
        self._rate: float | None = None  # tokens/s of the latest interval (None: idle or unknown span)

    def add(self, deltas: dict[str, float], span: float | None, at: float | None = None) -> None:
        """The interval that ended just now (at ``at``): ``deltas`` tokens per kind (empty: idle)
        over ``span`` seconds (None: unknown, e.g. no earlier scrape)."""
        if span is not None and span <= 0:
            span = None  # clocks that disagree (a final line stamped before the last scrape)
        tokens = sum(deltas.values())
        rate = tokens / span if (tokens > 0 and span) else None
        if self._held is not None:
            self._release(ending=not deltas, next_rate=rate)
        if deltas:
            self._held = (deltas, span, at, not self._busy, self._rate if self._busy else None)
        self._busy, self._rate = bool(deltas), rate

    def end(self) -> None:
        """No scrape follows (or none that continues the stretch): hand over what is held."""
        if self._held is not None:
            self._release(ending=True, next_rate=None)
        self._busy, self._rate = False, None

    def _release(self, ending: bool, next_rate: float | None) -> None:
        assert self._held is not None
        deltas, span, at, starts, before = self._held
        self._held = None
        if starts and ending:
            # A stretch of one interval has no neighbour to measure against: it counts in full. The
            # rate of another stretch could be a different load (a batch of requests decodes faster
            # per token than one), so the mean errs low, never high, and only for bursts shorter
            # than two scrapes.
            reference = None
        elif starts:
            reference = next_rate
        elif ending:
            reference = before
        else:
            reference = None  # inside the stretch: busy throughout
        active = span
        tokens = sum(deltas.values())
        if reference and tokens > 0:
            estimate = tokens / reference
            active = estimate if span is None else min(span, estimate)
        self.emit(deltas, active, at)


def fetch(url: str, timeout_s: float) -> str:
    """The body of ``GET url`` as text; raises OSError (no answer) or ValueError (not a usable 200)."""
    response = http_client.get(
        url, headers={"Accept": "text/plain;version=0.0.4"}, timeout_s=timeout_s, max_bytes=MAX_BODY
    )
    if response.status is None:
        raise OSError(response.error)
    if response.status != 200:
        raise ValueError(f"HTTP {response.status}")
    if response.truncated:
        raise ValueError(f"the response is larger than {MAX_BODY} bytes")
    return response.body.decode("utf-8", "replace")


class Target:
    """One endpoint scraped for one job (None: the machine's own engine)."""

    def __init__(self, url: str, job: int | None = None, engine: str = "auto", from_zero: bool = False) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a scrape URL must be http(s), not {url!r}")
        if engine not in ENGINE_NAMES:
            raise ValueError(f"engine must be one of {', '.join(ENGINE_NAMES)}, not {engine!r}")
        self.url, self.job, self.engine = url, job, engine
        self.rate = CounterRate(from_zero)
        self._warned: set[str] = set()
        self.failing = False

    def _warn(self, problem: str) -> None:
        # Said once per target: a scrape each second must not write a line each second.
        if problem not in self._warned:
            self._warned.add(problem)
            log.warning("scrape %s: %s", self.url, problem)

    def read(self, text: str) -> dict[str, float]:
        """Tokens produced since the last reading, from one ``/metrics`` text."""
        reading = parse(text, self.engine)
        for problem in reading.problems:
            self._warn(problem)
        return self.rate.update(reading.totals, reading.start_time)

    def scrape(self, timeout_s: float = 2.0, quiet: bool = False) -> dict[str, float]:
        """Fetch and read once; an unreachable endpoint gives {} and one warning until it is back
        (none with ``quiet``: the last scrape of a job that ended, whose server is likely gone)."""
        try:
            text = fetch(self.url, timeout_s)
        except (OSError, ValueError) as err:
            if not self.failing and not quiet:
                log.warning("scrape %s failed: %s", self.url, err)
            self.failing = True
            return {}
        if self.failing:
            log.info("scrape %s works again", self.url)
            self.failing = False
        return self.read(text)


def parse_target(spec: str) -> tuple[str, str]:
    """``URL`` or ``URL=engine`` (``--scrape``) -> (url, engine)."""
    url, sep, engine = spec.rpartition("=")
    if sep and engine in ENGINE_NAMES:
        return url, engine
    return spec, "auto"
