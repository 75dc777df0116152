"""The agent's scraper: exact totals, and rates over the time the engine was really producing.

The scraper runs on a scripted clock against a live ``/metrics`` endpoint whose counters the test
sets to what a steady engine would have produced by each scrape, so the engine's real active time
is known exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hwprobe import channel
from hwprobe.engines import prometheus
from hwprobe.engines.prometheus import Stretch
from hwprobe.scrape import Scraper
from hwprobe.tests.test_engines import _Endpoint
from hwprobe.workloads.serve import Metrics

# Scrapes about a second apart, never exactly (a loaded machine's timer).
SCRAPES = (0.0, 1.02, 1.98, 3.05, 4.0, 4.97, 6.03, 7.01, 7.99, 9.0, 10.02)


class Engine:
    """A serving engine that produces ``prompt_rate`` + ``generated_rate`` tokens/s between
    ``start`` and ``stop`` (s on the scripted clock), behind a live /metrics endpoint."""

    def __init__(self, start: float, stop: float, prompt_rate: float = 250.0, generated_rate: float = 937.5) -> None:
        self.start, self.stop = start, stop
        self.prompt_rate, self.generated_rate = prompt_rate, generated_rate
        self.metrics = Metrics()
        self.endpoint = _Endpoint(self.metrics.exposition())
        self.now = 0.0

    @property
    def active_s(self) -> float:
        return self.stop - self.start

    def at(self, t: float) -> None:
        """Move the clock to ``t`` and the counters with it (whole tokens, as engines count)."""
        self.now = t
        busy = min(max(0.0, t - self.start), self.stop - self.start)
        self.metrics.prompt_tokens = int(busy * self.prompt_rate)
        self.metrics.generated_tokens = int(busy * self.generated_rate)
        self.endpoint.body = self.metrics.exposition()

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    def close(self) -> None:
        self.endpoint.close()


@pytest.fixture
def engine() -> Any:
    made: list[Engine] = []

    def make(start: float, stop: float) -> Engine:
        made.append(Engine(start, stop))
        return made[-1]

    yield make
    for e in made:
        e.close()


def summed(entries: list[dict[str, Any]]) -> dict[str, float]:
    out = {"prompt": 0.0, "generated": 0.0, "active_s": 0.0}
    for e in entries:
        for k in out:
            out[k] += e.get(k, 0)
    return out


def scraped(make: Callable[[float, float], Engine], start: float, stop: float, times: tuple[float, ...] = SCRAPES):
    """Scrape an engine busy from ``start`` to ``stop`` at ``times``, then remove it (its final
    scrape at the last time); returns the engine and what the ledger got."""
    e = make(start, stop)
    ledger = channel.Ledger(clock=e.wall)
    scraper = Scraper(ledger, interval_s=1.0, timeout_s=1.0, clock=e.clock, wall=e.wall)
    scraper._stop.set()  # driven by hand
    e.at(times[0])
    scraper.add(e.endpoint.url, 5, "hwprobe", from_zero=True)
    for t in times[:-1]:
        e.at(t)
        scraper.scrape_once()
    scraper.remove(e.endpoint.url, 5)
    e.at(times[-1])
    scraper.scrape_once()
    assert scraper.targets == []
    return e, summed(ledger.drain())


def test_a_steady_engine_that_starts_and_stops_inside_intervals_gets_its_rate_within_2_percent(engine) -> None:
    e, got = scraped(engine, start=0.3, stop=7.6)
    # Exact totals: every token the engine counted, none twice.
    assert (got["prompt"], got["generated"]) == (e.metrics.prompt_tokens, e.metrics.generated_tokens)
    assert got["generated"] / got["active_s"] == pytest.approx(e.generated_rate, rel=0.02)
    assert got["active_s"] == pytest.approx(e.active_s, rel=0.02)
    # Whole intervals would have counted 7.99 s (from the scrape at 0 to the one at 7.99): 9 % low.


def test_the_first_interval_after_an_engine_starts_answering_is_not_stretched_over_the_wait(
    engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine the job starts does not answer at first; the interval that ends with its first
    answer counts the time it was producing, not the time since the registration."""
    e = engine(2.2, 6.5)
    real_fetch = prometheus.fetch

    def fetch(url: str, timeout_s: float) -> str:
        if e.now < 2.5:
            raise OSError("connection refused")
        return real_fetch(url, timeout_s)

    monkeypatch.setattr(prometheus, "fetch", fetch)
    ledger = channel.Ledger(clock=e.wall)
    scraper = Scraper(ledger, interval_s=1.0, timeout_s=0.5, clock=e.clock, wall=e.wall)
    scraper._stop.set()
    scraper.add(e.endpoint.url, 6, "hwprobe", from_zero=True)
    for t in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0):  # up from 2.5
        e.at(t)
        scraper.scrape_once()
    scraper.close()
    got = summed(ledger.drain())
    assert got["generated"] == e.metrics.generated_tokens
    assert got["active_s"] == pytest.approx(e.active_s, rel=0.02)  # 4.3 s, not 7 s since the registration


def test_closing_the_scraper_hands_over_the_interval_it_held(engine) -> None:
    e = engine(0.0, 100.0)
    ledger = channel.Ledger(clock=e.wall)
    scraper = Scraper(ledger, clock=e.clock, wall=e.wall)
    scraper._stop.set()
    scraper.add(e.endpoint.url, 7, "hwprobe", from_zero=True)
    for t in (1.0, 2.0, 3.0):
        e.at(t)
        scraper.scrape_once()
    held = summed(ledger.drain())
    assert held["generated"] == int(2.0 * e.generated_rate)  # the interval up to 3.0 waits for the next scrape
    scraper.close()
    rest = summed(ledger.drain())
    assert held["generated"] + rest["generated"] == e.metrics.generated_tokens
    assert held["active_s"] + rest["active_s"] == pytest.approx(3.0, rel=0.01)  # busy throughout (whole tokens)


def emitted(intervals: list[tuple[float, float]]) -> list[tuple[float, float | None]]:
    """Tokens and active seconds a Stretch hands on for (tokens, span) intervals, then its end."""
    out: list[tuple[float, float | None]] = []
    stretch = Stretch(lambda deltas, active_s, _at: out.append((deltas["generated"], active_s)))
    for tokens, span in intervals:
        stretch.add({"generated": tokens} if tokens else {}, span)
    stretch.end()
    return out


def test_the_edges_of_a_stretch_count_at_the_rate_of_their_neighbour() -> None:
    out = emitted([(0, 1.0), (300, 1.0), (1000, 1.0), (1000, 1.0), (600, 1.0), (0, 1.0)])
    assert out == [(300, pytest.approx(0.3)), (1000, 1.0), (1000, 1.0), (600, pytest.approx(0.6))]


def test_an_edge_faster_than_its_neighbour_counts_in_full_and_a_stretch_of_two_measures_each_by_the_other() -> None:
    assert emitted([(1200, 1.0), (1000, 1.0), (500, 1.0)]) == [(1200, 1.0), (1000, 1.0), (500, 0.5)]
    assert emitted([(400, 1.0), (800, 1.0)]) == [(400, 0.5), (800, 1.0)]


def test_a_lone_busy_interval_counts_in_full_and_one_of_unknown_length_takes_its_neighbours_rate() -> None:
    # No neighbour: the whole interval (the rate errs low, never high).
    assert emitted([(0, 1.0), (250, 1.0), (0, 1.0)]) == [(250, 1.0)]
    assert emitted([(500, None), (1000, 1.0), (1000, 1.0)]) == [(500, 0.5), (1000, 1.0), (1000, 1.0)]
    assert emitted([(500, None)]) == [(500, None)]
