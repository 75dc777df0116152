"""The agent: sample every second, close a window every few seconds into the spool, and let a
sender thread drain the spool to the server. SIGTERM/SIGINT flush what they can and exit 0."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from hwprobe.aggregate import Window
from hwprobe.channel import DEFAULT_PORT, Channel, Ledger, Listener, SocketListener, default_socket_path
from hwprobe.client import Backoff, IngestClient, Sender
from hwprobe.collectors import Probe, build_probe
from hwprobe.spool import Spool, state_dir

log = logging.getLogger("hwprobe")


def sample_once(probe: Probe | None = None, settle_s: float = 0.5) -> dict[str, Any]:
    """``{"inventory", "sample"}`` with the sample a window of one snapshot.

    A first snapshot primes the counters (CPU %, disk and network rates need an interval);
    the reported one is taken ``settle_s`` seconds later.
    """
    probe = probe or build_probe()
    try:
        inventory = probe.inventory()
        probe.collect()
        start = time.time()
        time.sleep(settle_s)
        window = Window(start)
        window.add(probe.collect())
        return {"inventory": inventory, "sample": window.close(time.time())}
    finally:
        probe.close()


class _Stop(threading.Event):
    """``Agent.stop``: setting it also wakes the sampling loop at once."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def set(self) -> None:
        super().set()
        self._wake.set()


class Agent:
    """Runs the sampling loop on the calling thread and the sender on its own thread.

    :meth:`flush` (the report channel's ``flush`` message) closes the current window at once
    and waits until the server has it, so a job's last tokens are stored when the worker reports
    the job's end.
    """

    def __init__(
        self,
        probe: Probe,
        spool: Spool,
        sender: Sender,
        interval_s: float = 1.0,
        send_every_s: float = 10.0,
        flush_timeout_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        ledger: Ledger | None = None,
        report_udp: Callable[[], bool] | None = None,
    ) -> None:
        self.probe = probe
        self.ledger = ledger  # token counts that leave with each window (design.md, Throughput)
        self.report_udp = report_udp  # whether the UDP report port listens (None: turned off)
        self.spool = spool
        self.sender = sender
        self.interval_s = interval_s
        self.per_window = max(1, round(send_every_s / interval_s))
        self.flush_timeout_s = flush_timeout_s
        self._monotonic = monotonic
        self._wall = wall
        self._wake_loop = threading.Event()
        self.stop = _Stop(self._wake_loop)
        self._flush_lock = threading.Lock()
        self._flush_waiters: list[tuple[threading.Event, dict[str, int | None]]] = []
        self._wake = threading.Event()
        self._sender_stop = threading.Event()
        self._sender_thread: threading.Thread | None = None

    # -- sender thread -------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._sender_stop.is_set():
            try:
                delay = self.sender.step()
            except Exception:  # the sender must outlive any surprise (a full disk, a bug)
                log.exception("sender: unexpected error; retrying in 10 s")
                delay = 10.0
            if delay == 0.0:
                continue
            if delay is None:  # spool empty: sleep until the next window arrives
                self._wake.wait()
                self._wake.clear()
            else:  # backing off: new windows must not cut the wait short
                self._sender_stop.wait(delay)

    def _put(self, window: Window) -> int | None:
        """Spool the window with the ledger's tokens; its seq, None when nothing was spooled."""
        if window.count == 0:
            return None
        sample = window.close(self._wall())
        if self.ledger is not None:
            tokens = self.ledger.drain()
            if tokens:
                sample["tokens"] = tokens
            dropped = self.ledger.take_dropped()
            if dropped:
                sample["tokens_dropped"] = dropped
        if self.report_udp is not None:
            sample["report_udp"] = self.report_udp()
        seq = None
        try:
            seq = self.spool.put(sample)
            log.debug("window of %d snapshots spooled as seq %d", window.count, seq)
        except Exception as err:
            log.error("could not spool a window: %s: %s", type(err).__name__, err)
        self._wake.set()
        return seq

    def flush(self, timeout_s: float = 3.0) -> bool:
        """Close the current window now and wait until the server has it; False on timeout."""
        deadline = self._monotonic() + timeout_s
        done = threading.Event()
        result: dict[str, int | None] = {"seq": None}
        with self._flush_lock:
            self._flush_waiters.append((done, result))
        self._wake_loop.set()
        if not done.wait(max(0.0, deadline - self._monotonic())) or result["seq"] is None:
            return False
        seq = result["seq"]
        while True:
            waiting = self.spool.peek(1)
            if not waiting or waiting[0]["seq"] > seq:
                return True
            if self._monotonic() >= deadline:
                return False
            self._sender_stop.wait(0.05)

    def _answer_flushes(self, seq: int | None) -> None:
        with self._flush_lock:
            waiters, self._flush_waiters = self._flush_waiters, []
        for done, result in waiters:
            result["seq"] = seq
            done.set()

    def _refresh_inventory(self) -> None:
        try:
            self.sender.set_inventory(self.probe.inventory())
        except Exception as err:
            log.warning("inventory refresh failed: %s: %s", type(err).__name__, err)

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Sample until ``stop`` is set, then flush; returns the exit status (0)."""
        self.sender.set_inventory(self.probe.inventory())
        self._sender_thread = threading.Thread(target=self._send_loop, name="hwprobe-sender", daemon=True)
        self._sender_thread.start()
        log.info(
            "sampling every %.3g s, sending every %d snapshots to %s",
            self.interval_s,
            self.per_window,
            self.sender.client.url,
        )
        origin = self._monotonic()
        tick = 0
        # Each window spans its snapshots' intervals, from the previous window's end. The first has
        # no previous one: it starts an interval before its first snapshot, like every later window.
        # Started at the first snapshot, a one-snapshot window lasted only that collect (0.0 s once
        # rounded, refused by the server and dead-lettered before Window.close had its floor).
        window = Window(self._wall() - self.interval_s)
        while not self.stop.is_set():
            window.add(self.probe.collect())
            if window.count >= self.per_window:
                self._answer_flushes(self._put(window))
                self._refresh_inventory()
                window = Window(self._wall())
            tick += 1
            # Drift-free: aim at origin + n * interval; after a stall, skip the missed ticks.
            now = self._monotonic()
            if origin + tick * self.interval_s < now:
                tick = int((now - origin) / self.interval_s) + 1
            while not self.stop.is_set() and self._wake_loop.wait(origin + tick * self.interval_s - self._monotonic()):
                self._wake_loop.clear()
                if self._flush_waiters and not self.stop.is_set():
                    # A job ended: its window leaves now rather than at the window's natural end.
                    if window.count == 0:
                        window.add(self.probe.collect())
                    self._answer_flushes(self._put(window))
                    window = Window(self._wall())
        self._shutdown(window)
        return 0

    def _shutdown(self, window: Window) -> None:
        log.info("stopping: spooling the partial window and flushing for up to %.3g s", self.flush_timeout_s)
        self._answer_flushes(self._put(window))
        self._sender_stop.set()
        self._wake.set()
        deadline = self._monotonic() + self.flush_timeout_s
        in_flight = False
        if self._sender_thread is not None:
            self._sender_thread.join(self.flush_timeout_s)
            # A request still in flight: a second sender would post the same batch again.
            in_flight = self._sender_thread.is_alive()
        if in_flight:
            deadline = self._monotonic()
        # One last pass, ignoring the backoff: each try is bounded by the time that is left.
        while True:
            left = deadline - self._monotonic()
            if left <= 0.1:
                break
            try:
                delay = self.sender.step(timeout_s=min(left, self.sender.client.timeout_s), force=True)
            except Exception as err:
                log.warning("final flush failed: %s: %s", type(err).__name__, err)
                break
            if delay != 0.0:
                break
        remaining = len(self.spool)
        if remaining:
            log.info("%d samples stay in the spool for the next start", remaining)
        self.probe.close()
        if not in_flight:  # the sender thread may still ack; the process exit closes it then
            self.spool.close()


def measure_storage_in_background(probe: Probe, state_file: str, directory: str | None) -> threading.Thread:
    """Find the drive's sequential read speed once (kept in ``state_file``; about a second of disk
    work when not kept yet) without delaying the first samples; the probe's inventory carries it
    from then on, so the next window's batch tells the server (the planner's "fits if streamed")."""
    from hwprobe.collectors.storage import measured_once

    def work() -> None:
        try:
            found = measured_once(state_file, directory)
        except Exception as err:  # a figure for the planner is never worth stopping the agent
            log.warning("storage read speed: not measured: %s: %s", type(err).__name__, err)
            return
        speed = found.get("storage_read_bytes_per_s")
        if speed is None:
            log.warning("storage read speed: %s is not writable or readable; not measured", found.get("storage_path"))
            return
        probe.add_inventory({"storage_read_bytes_per_s": speed})
        log.info("storage read speed of %s: %.0f MB/s", found.get("storage_path"), float(speed) / 1e6)  # type: ignore[arg-type]

    thread = threading.Thread(target=work, name="hwprobe-storage", daemon=True)
    thread.start()
    return thread


def run_agent(
    server: str,
    token: str,
    interval_s: float = 1.0,
    send_every_s: float = 10.0,
    spool_path: str | None = None,
    spool_max: int | None = None,
    batch_max: int = 100,
    backoff_base_s: float = 1.0,
    backoff_cap_s: float = 60.0,
    timeout_s: float = 10.0,
    report_port: int = DEFAULT_PORT,
    scrape: list[str] | tuple[str, ...] = (),
    report_socket: str | None = None,
    storage_dir: str | None = None,
    measure_storage: bool = True,
) -> int:
    """Build the probe, spool, client, sender, the local report channel (the Unix socket
    ``report_socket``, default ``$HWPROBE_STATE_DIR/report.sock``, "" off; UDP ``report_port``,
    0 off) and the scraping of ``scrape`` (``URL[=engine]``); measure the read speed of
    ``storage_dir`` once (default: the state folder) unless ``measure_storage`` is False; run until
    SIGTERM/SIGINT; return 0."""
    spool = Spool(spool_path, max_samples=spool_max) if spool_max else Spool(spool_path)
    client = IngestClient(server, token, timeout_s=timeout_s)
    sender = Sender(spool, client, batch_max=batch_max, backoff=Backoff(base_s=backoff_base_s, cap_s=backoff_cap_s))
    ledger = Ledger()
    scraper = None
    if scrape or report_port:
        from hwprobe.scrape import Scraper

        scraper = Scraper(ledger, interval_s=interval_s)
        for spec in scrape:
            from hwprobe.engines.prometheus import parse_target

            url, engine = parse_target(spec)
            scraper.add(url, None, engine)
    report = Channel(ledger, on_scrape=scraper.on_message if scraper else None)
    listener = None
    if report_port:
        listener = Listener(report_port, report).start()
        if listener.bound:
            log.info("report channel on udp 127.0.0.1:%d", listener.port)
    probe = build_probe()
    if measure_storage:
        state = state_dir()
        state.mkdir(parents=True, exist_ok=True)
        measure_storage_in_background(probe, str(state / "storage.json"), storage_dir or str(state))
    agent = Agent(
        probe,
        spool,
        sender,
        interval_s=interval_s,
        send_every_s=send_every_s,
        ledger=ledger,
        report_udp=(lambda: listener.bound) if listener is not None else None,
    )
    report.on_flush = agent.flush
    unix = None
    socket_path = default_socket_path() if report_socket is None else report_socket
    if socket_path:
        try:
            unix = SocketListener(socket_path, report).start()
            log.info("report channel on unix socket %s", socket_path)
        except OSError as err:  # jobs fall back to UDP; say why once
            log.error("report channel: cannot listen on unix socket %s (%s)", socket_path, err)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        if scraper is not None:  # each scrape's tokens are held one interval: into the last window
            scraper.close()
        agent.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("spool %s (%d waiting, last seq %d, %d dropped)", spool.path, len(spool), spool.last_seq, spool.dropped)
    try:
        return agent.run()
    finally:
        if listener is not None:
            listener.close()
        if unix is not None:
            unix.close()
        if scraper is not None:
            scraper.close()
