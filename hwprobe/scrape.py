"""The agent's scraping of serving engines' Prometheus endpoints, in its own thread.

Targets come from ``--scrape URL[=engine]`` (the machine's own engine: job None, kept for the
agent's lifetime) and from registrations on the local channel (one job's endpoint, until the
job's worker says stop or the agent restarts). Every ``interval_s`` each target is fetched once
with a short timeout; the tokens produced since the previous scrape go into the ledger as
source ``prometheus``, with the seconds the engine was producing them: the whole interval inside
a busy stretch, its tokens at the neighbouring interval's rate at the stretch's edges
(:class:`hwprobe.engines.prometheus.Stretch`). Each interval therefore reaches the ledger one
scrape late; a target's final scrape (after :meth:`Scraper.remove`) and :meth:`Scraper.close`
hand over what is held, so totals stay exact. Sampling never waits for a scrape.
:mod:`hwprobe.engines.prometheus` (and through it ``prometheus_client``) is imported only when the
first target appears.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from hwprobe.channel import Ledger

log = logging.getLogger("hwprobe")

MAX_TARGETS = 64


class Scraper:
    """Holds the targets and scrapes them every ``interval_s`` once there is one."""

    def __init__(
        self,
        ledger: Ledger,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.interval_s, self.timeout_s = interval_s, min(timeout_s, max(0.2, interval_s))
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._targets: dict[tuple[str, int | None], Any] = {}
        self._stopping: set[tuple[str, int | None]] = set()
        self._last_ok: dict[tuple[str, int | None], float | None] = {}  # last successful scrape
        self._stretches: dict[tuple[str, int | None], Any] = {}  # Stretch per target
        self._answered: set[tuple[str, int | None]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, url: str, job: int | None = None, engine: str = "auto", from_zero: bool = False) -> None:
        """Scrape ``url`` for ``job`` from now on; ValueError for a bad URL or engine name."""
        from hwprobe.engines.prometheus import Stretch, Target

        key = (url, job)
        with self._lock:
            self._stopping.discard(key)
            if key in self._targets:
                return
            if len(self._targets) >= MAX_TARGETS:
                log.warning("scrape %s for job %s refused: %d targets already", url, job, MAX_TARGETS)
                return
            self._targets[key] = Target(url, job, engine, from_zero)
            self._stretches[key] = Stretch(self._sink(job))
            # The counters of a from_zero endpoint started about now: the first scrape's tokens
            # were produced since.
            self._last_ok[key] = self._clock() if from_zero else None
            log.info("scraping %s (%s) for %s", url, engine, f"job {job}" if job else "this machine")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hwprobe-scrape", daemon=True)
                self._thread.start()

    def remove(self, url: str, job: int | None) -> None:
        """Scrape ``url`` once more (what it counted since the last scrape) and then no longer."""
        with self._lock:
            if (url, job) in self._targets:
                self._stopping.add((url, job))

    def on_message(self, message: dict[str, Any]) -> None:
        """A registration from the local channel (:func:`hwprobe.channel.decode`)."""
        if message["stop"]:
            self.remove(message["url"], message["job"])
            return
        try:
            self.add(message["url"], message["job"], message["engine"], message["from_zero"])
        except ValueError as err:
            log.warning("scrape registration ignored: %s", err)

    @property
    def targets(self) -> list[Any]:
        with self._lock:
            return list(self._targets.values())

    def _sink(self, job: int | None) -> Callable[[dict[str, float], float | None, float | None], None]:
        def add(deltas: dict[str, float], active_s: float | None, at: float | None) -> None:
            self.ledger.add(
                job,
                "prometheus",
                prompt=deltas.get("prompt", 0.0),
                generated=deltas.get("generated", 0.0),
                active_s=active_s,
                at=at,
            )

        return add

    def scrape_once(self) -> None:
        """Scrape every target once (the thread's step; tests call it directly)."""
        with self._lock:
            items = list(self._targets.items())
            stopping = set(self._stopping)
        for key, target in items:
            last = key in stopping
            try:
                deltas = target.scrape(self.timeout_s, quiet=last)
            except Exception:  # a surprise in one target must not end the others' scraping
                log.exception("scrape %s: unexpected error", target.url)
                deltas = {}
            now, at = self._clock(), self._wall()
            with self._lock:
                stretch = self._stretches.get(key)
                if stretch is None:  # its final scrape came first (a second caller)
                    continue
                if target.failing:
                    # No answer: whether the engine still works is unknown, so a busy stretch ends
                    # here. One that never answered yet is starting: it produced nothing before now.
                    stretch.end()
                    if key not in self._answered and target.rate.from_zero:
                        self._last_ok[key] = now
                else:
                    self._answered.add(key)
                    previous = self._last_ok.get(key)
                    self._last_ok[key] = now
                    stretch.add(deltas, now - previous if previous is not None else None, at)
                if last and key in self._stopping:
                    stretch.end()  # the target's final scrape: what it holds is final
                    self._stopping.discard(key)
                    self._targets.pop(key, None)
                    self._last_ok.pop(key, None)
                    self._stretches.pop(key, None)
                    self._answered.discard(key)
                    log.info("stopped scraping %s for job %s", target.url, target.job)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.scrape_once()

    def close(self) -> None:
        """Stop scraping and hand the intervals still held to the ledger (the agent calls this
        before its last window)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1)
        with self._lock:
            for stretch in self._stretches.values():
                stretch.end()
