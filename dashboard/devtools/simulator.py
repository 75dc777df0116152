"""A fleet simulator: N virtual GPU machines that send realistic windows through the agent's own
spool, sender and HTTP client (``hwprobe.spool.Spool``, ``hwprobe.client.Sender`` and
``IngestClient``), all from one process. For load tests (``bench/scale.py``) and demos:

    python manage.py simulate --machines 50 --gpus 8 --interval 5 --url http://127.0.0.1:8000

How one process carries a thousand agents: each virtual machine has its own SQLite spool and
``Sender``, exactly as a real agent does, but no threads of its own. One scheduler thread closes
each machine's window every ``interval`` seconds (machines are spread evenly over the interval) and
puts it in that machine's spool; a small pool of sender threads drains the spools of the machines
with something to send, one ``Sender.step()`` (one HTTP request, up to ``batch_max`` windows) at a
time, with the agent's reply policy and backoff. A spool costs about 0.2 ms per window (put, peek,
ack) and 0.2 MiB of memory, so the real spool scales to 1,000 machines and is used as is.

Values come from a model of each machine's workload (training, inference with a daily pattern,
development, idle) shaped like the real H100 capture in ``hwprobe/tests/fixtures/h100_device/``:
utilisation, memory controller load, power, temperature and clocks move together, with per-GPU
noise that carries over from one window to the next.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import queue
import random
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dashboard.core import stats
from hwprobe.client import Backoff, IngestClient, Reply, Sender
from hwprobe.spool import Spool

log = logging.getLogger("hwprobe.simulate")

GIB = 2**30
DAY_S = 86400.0


class GpuModel(NamedTuple):
    """One accelerator type: what NVML reports for it, idle and under full load."""

    name: str
    mem_total_bytes: int
    power_limit_watts: float
    idle_watts: float
    sm_idle_mhz: int
    sm_max_mhz: int
    sm_capped_mhz: int  # the SM clock when the power cap holds it back (throttle bit 4)
    mem_clock_mhz: int
    idle_temp_c: float
    load_temp_c: float


# H100 figures are the capture's (nvml_idle.json / windows_load.jsonl: 70 W and 345 MHz idle,
# 698 W and 1335-1410 MHz under a bf16 matmul at its 700 W cap, 31 -> 55 C); the others are the
# same fields as NVML reports them on those boards.
GPU_MODELS: dict[str, GpuModel] = {
    "H100": GpuModel("NVIDIA H100 80GB HBM3", 85520809984, 700.0, 70.0, 345, 1980, 1365, 2619, 31.0, 56.0),
    "H200": GpuModel("NVIDIA H200", 150754820096, 700.0, 76.0, 345, 1980, 1395, 3201, 30.0, 58.0),
    "A100": GpuModel("NVIDIA A100-SXM4-80GB", 85899345920, 400.0, 62.0, 210, 1410, 1275, 1593, 29.0, 60.0),
    "L40S": GpuModel("NVIDIA L40S", 48305799168, 350.0, 34.0, 210, 2520, 2175, 9001, 27.0, 66.0),
}
# model, share of machines, host CPU, cores, threads, RAM
HOSTS = (
    ("H100", 0.45, "Intel(R) Xeon(R) Platinum 8480+", 112, 224, 2048 * GIB),
    ("H200", 0.20, "AMD EPYC 9654 96-Core Processor", 192, 384, 2304 * GIB),
    ("A100", 0.20, "AMD EPYC 7763 64-Core Processor", 128, 256, 1024 * GIB),
    ("L40S", 0.15, "AMD EPYC 9354 32-Core Processor", 64, 128, 768 * GIB),
)
# workload, share of machines
WORKLOADS = (("training", 0.35), ("inference", 0.35), ("development", 0.10), ("idle", 0.20))
USERS = ("alice", "bob", "chen", "dana", "emeka", "farah", "svc-infer")

# NVML clocks-event reasons seen in the capture: idle, and the software power cap under load.
THROTTLE_IDLE, THROTTLE_POWER_CAP = 1, 4


def _template_inventory() -> dict[str, Any]:
    """The fields of a real H100 host's inventory (the agent's ``sample`` on it; the recording is in
    hwprobe/tests/fixtures/h100_device/sample_idle.json): every simulated machine copies them."""
    return {
        "os": "Linux 6.8.0 (Ubuntu 24.04.3 LTS)",
        "accelerators": [
            {
                "index": 0,
                "vendor": "nvidia",
                "name": "",
                "uuid": "",
                "mem_total_bytes": 0,
                "power_limit_watts": 0.0,
                "parent_uuid": None,
                "mig_profile": None,
                "driver": "580.159.04",
            }
        ],
    }


def _pick(rng: random.Random, choices: tuple) -> Any:
    """One entry of ``(value, share, ...)`` tuples, weighted by share."""
    x, total = rng.random(), 0.0
    for choice in choices:
        total += choice[1]
        if x < total:
            return choice
    return choices[-1]


def _stats(
    mean: float, low: float, high: float, lo: float = 0.0, hi: float = math.inf, digits: int = 3
) -> dict[str, float]:
    """``{min, mean, max}`` with min <= mean <= max inside [lo, hi] (the server checks both)."""
    mean = min(hi, max(lo, round(mean, digits)))
    return {"min": min(mean, max(lo, round(low, digits))), "mean": mean, "max": max(mean, min(hi, round(high, digits)))}


def _flat(value: float) -> dict[str, float]:
    return {"min": value, "mean": value, "max": value}


@dataclass
class GpuState:
    """Per-GPU values that persist between windows (noise with memory, the job's allocation)."""

    uuid: str
    drift: float = 0.0  # slow utilisation offset, a random walk pulled back to 0
    heat: float = 0.0  # per-board temperature offset (airflow position), C
    job_mem_fraction: float = 0.0  # share of the board's memory the current job holds
    pid: int = 0
    user: str = ""


class MachineModel:
    """One virtual machine: its inventory and a generator of windows shaped like the agent's."""

    def __init__(self, name: str, gpus: int, interval_s: float, seed: int | None = None) -> None:
        self.name = name
        self.interval_s = interval_s
        self.rng = random.Random(seed if seed is not None else name)
        rng = self.rng
        host = _pick(rng, HOSTS)
        self.gpu = GPU_MODELS[host[0]]
        self.cpu_model, self.cpu_cores, self.cpu_threads, self.mem_total_bytes = host[2:]
        self.workload = _pick(rng, WORKLOADS)[0]
        # Each machine's day starts at its own hour: sites in several time zones.
        self.day_phase = rng.random() * DAY_S
        self.intensity = rng.uniform(0.85, 1.0)  # how hard its jobs push the power cap
        self.mem_util_ratio = rng.uniform(0.3, 0.65)  # memory-controller load per unit of SM load
        self.job_until = 0.0
        self.gpus = [
            GpuState(uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}/{i}')}", heat=rng.uniform(-3, 3))
            for i in range(gpus)
        ]
        self._new_job(time.time())

    # -- inventory -----------------------------------------------------------------------

    def inventory(self) -> dict[str, Any]:
        """The inventory the agent would send, built on the captured H100 host's record."""
        template = _template_inventory()
        accelerator = template["accelerators"][0]
        return {
            "hostname": f"{self.name}.sim",
            "os": template["os"],
            "cpu_model": self.cpu_model,
            "cpu_cores": self.cpu_cores,
            "cpu_threads": self.cpu_threads,
            "mem_total_bytes": self.mem_total_bytes,
            "accelerators": [
                {
                    **accelerator,
                    "index": i,
                    "name": self.gpu.name,
                    "uuid": g.uuid,
                    "mem_total_bytes": self.gpu.mem_total_bytes,
                    "power_limit_watts": self.gpu.power_limit_watts,
                    "parent_uuid": None,
                    "mig_profile": None,
                }
                for i, g in enumerate(self.gpus)
            ],
        }

    # -- load model ----------------------------------------------------------------------

    def _new_job(self, now: float) -> None:
        """Start (or end) the job on the GPUs: how long it runs and how much memory it holds."""
        rng = self.rng
        busy = self.workload != "idle" and (self.workload != "development" or rng.random() < 0.5)
        self.job_until = now + rng.uniform(600, 6 * 3600)
        user = rng.choice(USERS)
        pid = rng.randrange(1000, 4_000_000)
        fraction = rng.uniform(0.55, 0.95) if self.workload == "training" else rng.uniform(0.3, 0.9)
        for g in self.gpus:
            g.job_mem_fraction = fraction if busy else 0.0
            g.pid, g.user = (pid, user) if busy else (0, "")
            pid += 1

    def load(self, now: float) -> float:
        """The machine's target utilisation now, 0..1, before per-GPU noise."""
        if now > self.job_until:
            self._new_job(now)
        if self.gpus and self.gpus[0].job_mem_fraction == 0.0:
            return 0.0
        day = math.sin(2 * math.pi * ((now + self.day_phase) % DAY_S) / DAY_S)  # -1..1
        if self.workload == "training":
            # Steady near 100 %, with a short evaluation or checkpoint dip now and then.
            return 0.35 if self.rng.random() < 0.04 else 0.97
        if self.workload == "inference":
            return max(0.05, 0.45 + 0.35 * day + self.rng.gauss(0, 0.08))
        return max(0.0, 0.25 + 0.2 * day + self.rng.gauss(0, 0.15))  # development: bursts

    # -- one window ----------------------------------------------------------------------

    def window(self, end_ts: float) -> dict[str, Any]:
        """One window ending at ``end_ts`` (Unix s), as ``Window.close`` returns it (no ``seq``)."""
        rng, gpu = self.rng, self.gpu
        target = self.load(end_ts)
        gpus = []
        busy_gpus = 0
        host_mem_job = 0.0
        for i, g in enumerate(self.gpus):
            g.drift = 0.8 * g.drift + rng.gauss(0, 0.03)
            u = 0.0 if target == 0.0 else min(1.0, max(0.0, target + g.drift))
            util = 100.0 * u
            if util > 1.0:
                busy_gpus += 1
            # Power follows utilisation up to the cap; at the cap the SM clock drops (capture:
            # 698 W of 700, 1335-1410 MHz, clocks-event reason 4 = SW power cap).
            span = gpu.power_limit_watts - gpu.idle_watts
            power = gpu.idle_watts + span * (u**1.3) * self.intensity
            capped = power > 0.96 * gpu.power_limit_watts
            if capped:
                power = gpu.power_limit_watts * rng.uniform(0.985, 0.999)
            heat = (power - gpu.idle_watts) / span
            temp = gpu.idle_temp_c + (gpu.load_temp_c - gpu.idle_temp_c) * heat + g.heat
            if util < 1.0:
                sm, throttle = float(gpu.sm_idle_mhz), THROTTLE_IDLE
            elif capped:
                sm, throttle = gpu.sm_capped_mhz + rng.uniform(-30, 45), THROTTLE_POWER_CAP
            else:
                sm, throttle = float(gpu.sm_max_mhz), 0
            mem_used = int(gpu.mem_total_bytes * g.job_mem_fraction)
            host_mem_job += mem_used * 0.25
            spread = 0.0 if util == 0.0 else min(util, rng.uniform(2, 12))
            gpus.append(
                {
                    "index": i,
                    "uuid": g.uuid,
                    "util_percent": _stats(util, util - spread, util + spread / 3, 0, 100, 1),
                    "mem_util_percent": _stats(
                        util * self.mem_util_ratio,
                        (util - spread) * self.mem_util_ratio,
                        (util + 2) * self.mem_util_ratio,
                        0,
                        100,
                        1,
                    ),
                    "mem_used_bytes": _flat(mem_used),
                    "power_watts": _stats(
                        power, power * (1 - rng.uniform(0, 0.03)), power * (1 + rng.uniform(0, 0.03))
                    ),
                    "temp_c": _stats(temp, temp - rng.uniform(0, 1.5), temp + rng.uniform(0, 1.5), -273.15, 120, 1),
                    "sm_clock_mhz": _stats(
                        sm,
                        sm - (rng.uniform(0, 60) if capped else 0),
                        sm + (rng.uniform(0, 60) if capped else 0),
                        0,
                        1e5,
                        1,
                    ),
                    "mem_clock_mhz": _flat(gpu.mem_clock_mhz),
                    "mem_total_bytes": gpu.mem_total_bytes,
                    "power_limit_watts": gpu.power_limit_watts,
                    "ecc_errors": 0,
                    "xid_errors": 0,
                    "throttle_reasons": throttle,
                    # The process holds a little less than the board reports used (the capture:
                    # 1,184,890,880 of 1,194,131,456 bytes: the CUDA context).
                    "processes": [
                        {
                            "pid": g.pid,
                            "name": "python3",
                            "user": g.user,
                            "mem_used_bytes": max(0, mem_used - 9_240_576),
                        }
                    ]
                    if mem_used
                    else [],
                }
            )
        return {
            "ts": round(end_ts, 3),
            "interval_s": self.interval_s,
            "count": max(1, round(self.interval_s)),
            "system": self._system(busy_gpus, host_mem_job),
            "gpus": gpus,
        }

    def _system(self, busy_gpus: int, host_mem_job: float) -> dict[str, Any]:
        """Host metrics that follow the GPUs: one busy feeder core per busy GPU, as in the capture."""
        rng, threads = self.rng, self.cpu_threads
        cores = [round(rng.uniform(0, 1.5), 1) for _ in range(threads)]
        for c in range(min(threads, busy_gpus)):
            cores[c * 7 % threads] = round(rng.uniform(92, 100), 1)
        for c in range(min(threads, busy_gpus * 3)):  # data loader workers
            cores[(c * 11 + 3) % threads] = round(rng.uniform(20, 70), 1)
        cpu = sum(cores) / threads
        mem = min(self.mem_total_bytes * 0.95, self.mem_total_bytes * 0.04 + host_mem_job)
        active = busy_gpus > 0
        disk_read = rng.uniform(2e7, 4e8) if active else rng.uniform(0, 4096)
        disk_write = (
            rng.uniform(1e9, 3e9) if active and rng.random() < 0.03 else rng.uniform(0, 2e6 if active else 8192)
        )
        net = (
            rng.uniform(5e6, 5e8)
            if active and self.workload == "training"
            else rng.uniform(1e4, 2e7 if active else 5e4)
        )
        return {
            "cpu_percent": _stats(cpu, cpu * rng.uniform(0.8, 1.0), min(100.0, cpu * rng.uniform(1.0, 1.3)), 0, 100),
            "load1": _stats(busy_gpus * 4.2 + rng.uniform(0, 1), busy_gpus * 3.9, busy_gpus * 4.5 + 1.2),
            "mem_used_bytes": _stats(mem, mem * 0.995, mem * 1.004),
            "swap_used_bytes": _flat(0),
            "disk_read_bytes_per_s": _stats(disk_read, 0, disk_read * 2.5),
            "disk_write_bytes_per_s": _stats(disk_write, 0, disk_write * 3),
            "net_rx_bytes_per_s": _stats(net, net * 0.5, net * 1.6),
            "net_tx_bytes_per_s": _stats(net * 0.7, net * 0.3, net * 1.2),
            "mem_wired_bytes": None,
            "mem_compressed_bytes": None,
            "mem_total_bytes": self.mem_total_bytes,
            "swap_total_bytes": 0,
            "cpu_per_core_percent": cores,
        }


# -- enrollment (needs Django) -----------------------------------------------------------


def machine_names(count: int, prefix: str = "sim-") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(1, count + 1)]


def enroll(names: list[str], token_file: Path) -> dict[str, tuple[str, int]]:
    """Enroll these machines (existing ones are reused); returns ``{name: (token, last_seq)}``.

    Tokens are kept in ``token_file`` (JSON, mode 600); one is issued again only where the file
    has none that still works, so running the simulator twice does not pile up tokens.
    """
    from django.db import transaction

    from dashboard.core import tokens
    from dashboard.fleet.models import AgentToken, Machine

    kept: dict[str, str] = {}
    if token_file.exists():
        kept = json.loads(token_file.read_text())
    with transaction.atomic():
        existing = {m.name: m for m in Machine.objects.filter(name__in=names)}
        Machine.objects.bulk_create([Machine(name=n) for n in names if n not in existing])
        machines = {m.name: m for m in Machine.objects.filter(name__in=names)}
        valid = {
            (t.machine_id, t.prefix): t.digest
            for t in AgentToken.objects.filter(machine__in=machines.values(), revoked_at=None)
        }
        out: dict[str, tuple[str, int]] = {}
        new_tokens = []
        for name in names:
            m, token = machines[name], kept.get(name, "")
            prefix = tokens.split(token, "hwa")
            digest = valid.get((m.pk, prefix))
            if digest is None or not tokens.matches(token, digest):
                token, prefix, digest = tokens.new_token("hwa")
                new_tokens.append(AgentToken(machine=m, prefix=prefix, digest=digest, label="simulate"))
            kept[name] = token
            out[name] = (token, m.last_seq)
        AgentToken.objects.bulk_create(new_tokens)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = token_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept, indent=0))
    tmp.chmod(0o600)
    tmp.replace(token_file)
    log.info("enrolled %d machines (%d new tokens); tokens in %s", len(names), len(new_tokens), token_file)
    return out


# -- sending -----------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values`` (dashboard.core.stats' rule); NaN for none."""
    result = stats.percentile(values, p / 100)
    return math.nan if result is None else result


class Counters:
    """What every virtual machine's client saw, shared by the sender threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.accepted = self.duplicates = self.errors = self.windows = 0
        self.latencies_s: list[float] = []  # every request, for the run's percentiles
        self.last_error = ""

    def record(self, reply: Reply, elapsed_s: float) -> None:
        with self.lock:
            self.requests += 1
            self.latencies_s.append(elapsed_s)
            if reply.status is not None and 200 <= reply.status < 300 and reply.body:
                self.accepted += int(reply.body.get("accepted", 0))
                self.duplicates += int(reply.body.get("duplicates", 0))
            else:
                self.errors += 1
                self.last_error = f"{reply.status}: {reply.error}"


class TimedClient(IngestClient):
    """The agent's IngestClient, timing each request into ``Counters``."""

    def __init__(self, server: str, token: str, counters: Counters, timeout_s: float = 10.0) -> None:
        super().__init__(server, token, timeout_s=timeout_s)
        self.counters = counters

    def post(self, document: dict[str, Any], timeout_s: float | None = None) -> Reply:
        t0 = time.perf_counter()
        reply = super().post(document, timeout_s=timeout_s)
        self.counters.record(reply, time.perf_counter() - t0)
        return reply


@dataclass
class VirtualMachine:
    model: MachineModel
    spool: Spool
    sender: Sender
    pending: bool = False  # queued for a sender thread, being sent, or waiting out a backoff
    wanted: bool = False  # a window arrived while a sender thread had it


def _continue_seq(path: Path, last_seq: int) -> None:
    """A fresh spool for a machine the server already knows: start after the server's last seq,
    or its first windows would count as duplicates. (A real agent keeps its spool for this.)"""
    if last_seq <= 0:
        return
    spool = Spool(path)
    behind = spool.last_seq < last_seq and len(spool) == 0
    spool.close()
    if behind:
        with sqlite3.connect(path) as db:
            db.execute("UPDATE counters SET value = ? WHERE name = 'last_seq'", (last_seq,))


@dataclass
class Status:
    """One status line's figures; ``bench/scale.py`` reads them from the summary file."""

    elapsed_s: float
    windows: int
    accepted: int
    duplicates: int
    requests: int
    errors: int
    backlog: int
    p50_ms: float
    p99_ms: float
    lag_s: float

    def line(self, machines: int, interval: float) -> str:
        return (
            f"simulate | {self.elapsed_s:6.0f} s  {machines} machines  windows {self.windows:,}  accepted "
            f"{self.accepted:,} ({self.accepted / max(self.elapsed_s, 1e-9):,.1f}/s of {machines / interval:,.1f}/s)  "
            f"backlog {self.backlog:,}  latency p50 {self.p50_ms:.0f} ms p99 {self.p99_ms:.0f} ms  "
            f"errors {self.errors}" + (f"  lag {self.lag_s:.1f} s" if self.lag_s >= 1 else "")
        )


@dataclass
class Simulator:
    """Runs the virtual machines: windows on schedule, spooled, sent by a pool of threads."""

    url: str
    machines: dict[str, tuple[str, int]]  # name -> (token, server's last seq)
    gpus: int = 8
    interval_s: float = 5.0
    spool_dir: Path | None = None
    senders: int = 32
    batch_max: int = 100
    status_every_s: float = 10.0
    # Every machine's first batch carries its inventory, which costs the server more: the summary's
    # "steady" figures leave this start-up burst out.
    warmup_s: float = 30.0
    flush_s: float = 5.0
    timeout_s: float = 10.0
    print_fn: Callable[[str], None] = print
    counters: Counters = field(default_factory=Counters)
    history: list[Status] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: queue.Queue[VirtualMachine | None] = queue.Queue()
        self._retries: list[tuple[float, int, VirtualMachine]] = []
        self._wake = threading.Condition(self._lock)
        self.stop = threading.Event()
        self._tmp_dir: str | None = None
        self.vms: list[VirtualMachine] = []

    def _open(self) -> None:
        if self.spool_dir is None:
            self._tmp_dir = tempfile.mkdtemp(prefix="hwdash-sim-spool-")
            self.spool_dir = Path(self._tmp_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        # A durable spool holds three files open (database, WAL, shared memory); where the file
        # limit cannot cover that, the spools keep one file each and skip syncs (they are the
        # simulator's, not a real agent's: the server's side of the run is the same).
        durable = _raise_file_limit(len(self.machines) * 3 + self.senders * 2 + 256)
        if not durable:
            _raise_file_limit(len(self.machines) + self.senders * 2 + 256)
            self.print_fn(f"simulate | {len(self.machines)} spools without WAL or syncs, to fit the open-file limit")
        for name, (token, last_seq) in self.machines.items():
            path = self.spool_dir / f"{name}.sqlite3"
            _continue_seq(path, last_seq)
            model = MachineModel(name, self.gpus, self.interval_s)
            spool = Spool(path, durable=durable)
            client = TimedClient(self.url, token, self.counters, timeout_s=self.timeout_s)
            sender = Sender(spool, client, batch_max=self.batch_max, backoff=Backoff(), inventory=model.inventory())
            self.vms.append(VirtualMachine(model, spool, sender))

    # -- sender pool ---------------------------------------------------------------------

    def _send_worker(self) -> None:
        while True:
            vm = self._ready.get()
            if vm is None:
                return
            while True:
                with self._lock:
                    vm.wanted = False
                try:
                    delay = vm.sender.step()
                except Exception:  # one machine's surprise must not stop the others
                    log.exception("%s: sender failed; retrying in 10 s", vm.model.name)
                    delay = 10.0
                if delay == 0.0:
                    continue  # more in the spool: send the next batch now
                with self._lock:
                    if delay is None:
                        if vm.wanted:
                            continue
                        vm.pending = False
                    else:  # backing off: new windows must not cut the wait short (as the agent)
                        heapq.heappush(self._retries, (time.monotonic() + delay, id(vm), vm))
                        self._wake.notify()
                break

    def _offer(self, vm: VirtualMachine) -> None:
        with self._lock:
            vm.wanted = True
            if vm.pending:
                return
            vm.pending = True
        self._ready.put(vm)

    # -- the run -------------------------------------------------------------------------

    def backlog(self) -> int:
        return sum(self._per_agent)

    def _status(self, started: float, lag_s: float) -> Status:
        c = self.counters
        self._per_agent = [len(vm.spool) for vm in self.vms]
        if time.monotonic() - started >= self.warmup_s:  # each agent's backlog, for its percentiles
            self.agent_backlogs.extend(self._per_agent)
        with c.lock:
            recent = c.latencies_s[self._lat_mark :]
            self._lat_mark = len(c.latencies_s)
            status = Status(
                time.monotonic() - started,
                c.windows,
                c.accepted,
                c.duplicates,
                c.requests,
                c.errors,
                self.backlog(),
                percentile(recent, 50) * 1000,
                percentile(recent, 99) * 1000,
                lag_s,
            )
        self.history.append(status)
        return status

    def run(self, seconds: float | None = None) -> dict[str, Any]:
        """Send until ``seconds`` have passed or ``stop`` is set (Ctrl-C too); returns the summary."""
        self._open()
        self.agent_backlogs: list[int] = []
        self._lat_mark = 0
        warm_mark: int | None = None
        n = len(self.vms)
        threads = [
            threading.Thread(target=self._send_worker, name=f"sim-sender-{i}", daemon=True)
            for i in range(max(1, self.senders))
        ]
        for t in threads:
            t.start()
        started = time.monotonic()
        # Windows spread evenly over the interval, so the server sees a steady stream.
        windows = [(started + self.interval_s * (i + 1) / n, i) for i in range(n)]
        heapq.heapify(windows)
        next_status = started + self.status_every_s
        deadline = started + seconds if seconds else math.inf
        lag = 0.0
        self.print_fn(
            f"simulate | {n} machines x {self.gpus} GPUs, a window every {self.interval_s:g} s "
            f"({n / self.interval_s:,.1f} windows/s) to {self.url}; spools in {self.spool_dir}"
        )
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                if warm_mark is None and now - started >= self.warmup_s:
                    with self.counters.lock:
                        warm_mark = len(self.counters.latencies_s)
                # A simulator short of CPU falls behind here; it still prints its status and
                # stops on time (the windows it did not make show as offered but not made).
                while windows and windows[0][0] <= now and time.monotonic() < min(next_status, deadline):
                    due, i = heapq.heappop(windows)
                    vm = self.vms[i]
                    vm.spool.put(vm.model.window(time.time()))
                    with self.counters.lock:
                        self.counters.windows += 1
                    self._offer(vm)
                    heapq.heappush(windows, (due + self.interval_s, i))
                    lag = max(0.0, now - due)
                with self._lock:
                    while self._retries and self._retries[0][0] <= now:
                        vm = heapq.heappop(self._retries)[2]
                        self._ready.put(vm)  # still pending: nobody else queues it
                if now >= next_status:
                    self.print_fn(self._status(started, lag).line(n, self.interval_s))
                    # Behind (a status taking seconds among thousands of spools): the next one
                    # after at least a second of making windows.
                    next_status = max(next_status + self.status_every_s, time.monotonic() + 1.0)
                wake = min(windows[0][0] if windows else math.inf, next_status, deadline)
                with self._lock:
                    if self._retries:
                        wake = min(wake, self._retries[0][0])
                    self._wake.wait(max(0.0, wake - time.monotonic()))
        except KeyboardInterrupt:
            self.print_fn("simulate | interrupted")
        run_s = time.monotonic() - started
        at_stop = self._status(started, lag)  # before the flush drains what is left
        with self.counters.lock:
            steady_latencies = self.counters.latencies_s[warm_mark:] if warm_mark is not None else []
        return self._finish(started, threads, lag, run_s, at_stop, steady_latencies)

    def _finish(
        self,
        started: float,
        threads: list[threading.Thread],
        lag: float,
        run_s: float,
        at_stop: Status,
        steady_latencies: list[float],
    ) -> dict[str, Any]:
        # Like the agent on SIGTERM: a few seconds to deliver what is spooled, then stop.
        deadline = time.monotonic() + self.flush_s
        while time.monotonic() < deadline:
            with self._lock:
                waiting = {id(vm) for _, _, vm in self._retries}  # not worth their backoff now
                busy = any(vm.pending and id(vm) not in waiting for vm in self.vms)
            if not busy:
                break
            time.sleep(0.1)
        try:  # machines still queued stay spooled; only requests in flight finish
            while True:
                self._ready.get_nowait()
        except queue.Empty:
            pass
        for _ in threads:
            self._ready.put(None)
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()) + self.timeout_s)
        final = self._status(started, lag)
        self.print_fn(final.line(len(self.vms), self.interval_s) + "  (final)")
        c = self.counters
        steady = [s.backlog for s in self.history[:-1] if s.elapsed_s >= self.warmup_s]
        summary = {
            # Rates over the time windows were made (the final flush adds none).
            "machines": len(self.vms),
            "gpus": self.gpus,
            "interval_s": self.interval_s,
            "seconds": run_s,
            "windows": c.windows,
            "offered_per_s": len(self.vms) / self.interval_s,
            "accepted": c.accepted,
            "accepted_per_s": c.accepted / run_s if run_s else 0.0,
            "duplicates": c.duplicates,
            "requests": c.requests,
            "errors": c.errors,
            "last_error": c.last_error,
            "p50_ms": percentile(c.latencies_s, 50) * 1000,
            "p99_ms": percentile(c.latencies_s, 99) * 1000,
            "backlog_max": max(s.backlog for s in self.history),
            "backlog_at_stop": at_stop.backlog,
            "backlog_final": final.backlog,  # after the flush
            # After the start-up burst (warmup_s): status samples of the backlog, request latency.
            "warmup_s": self.warmup_s,
            "backlog_median": percentile(steady, 50),
            "backlog_p90": percentile(steady, 90),
            "backlog_max_steady": max(steady, default=math.nan),
            # Windows waiting in one agent's spool, over every agent and status sample after warmup_s.
            "agent_backlog_p50": percentile(self.agent_backlogs, 50),
            "agent_backlog_p99": percentile(self.agent_backlogs, 99),
            "agent_backlog_max": max(self.agent_backlogs, default=0),
            "p50_ms_steady": percentile(steady_latencies, 50) * 1000,
            "p99_ms_steady": percentile(steady_latencies, 99) * 1000,
            "history": [s.__dict__ for s in self.history],
        }
        if not any(t.is_alive() for t in threads):  # a request still in flight may yet ack
            for vm in self.vms:
                vm.spool.close()
            if self._tmp_dir:
                shutil.rmtree(self._tmp_dir, ignore_errors=True)
        return summary


def _raise_file_limit(wanted: int) -> bool:
    """Raise this process's open-file limit to ``wanted`` where it may; whether it is that high now."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft >= wanted:
            return True
        if hard < wanted:
            try:  # a privileged process may raise the hard limit too
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
                return True
            except (ValueError, OSError):
                pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))
        return hard >= wanted
    except (ImportError, ValueError, OSError) as err:
        log.warning("could not raise the open-file limit to %d: %s", wanted, err)
        return False


def default_dir(prefix: str) -> Path:
    """Tokens and spools of a prefix's virtual machines, under the dashboard's data folder."""
    from django.conf import settings

    return Path(settings.DATA_DIR) / "simulate" / prefix.rstrip("-_.")


def main(
    url: str,
    machines: int,
    gpus: int,
    interval_s: float,
    seconds: float | None = None,
    prefix: str = "sim-",
    spool_dir: str | None = None,
    token_file: str | None = None,
    senders: int = 32,
    batch_max: int = 100,
    status_every_s: float = 10.0,
    enroll_only: bool = False,
    summary: str | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Enroll ``machines`` virtual machines and, unless ``enroll_only``, run them (the command's body)."""
    base = default_dir(prefix)
    tokens_path = Path(token_file) if token_file else base / "tokens.json"
    t0 = time.perf_counter()
    enrolled = enroll(machine_names(machines, prefix), tokens_path)
    print_fn(
        f"simulate | {len(enrolled)} machines enrolled ({prefix}0001..) in {time.perf_counter() - t0:.1f} s; "
        f"tokens in {tokens_path}"
    )
    if enroll_only:
        return None
    from django.db import connections

    connections.close_all()  # the run needs no database: only HTTP from here on
    sim = Simulator(
        url,
        enrolled,
        gpus=gpus,
        interval_s=interval_s,
        spool_dir=Path(spool_dir) if spool_dir else base / "spool",
        senders=senders,
        batch_max=batch_max,
        status_every_s=status_every_s,
        print_fn=print_fn,
    )
    result = sim.run(seconds)
    if summary:
        Path(summary).write_text(json.dumps(result, indent=1))
    return result
