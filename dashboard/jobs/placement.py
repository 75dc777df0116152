"""Automatic placement: which machine and GPUs a queued job gets, or why it waits.

Free memory per GPU is what the machine's latest telemetry says is free (so processes started
outside the dashboard count), minus what jobs placed there but not yet visible in telemetry
reserve. A pass holds one advisory lock (not the machine rows, which ingest and pages need), so
two schedulers running at once are serialised and never hand out the same memory twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import connection, transaction
from django.utils import timezone

from dashboard.fleet.models import Machine
from dashboard.fleet.queries import devices
from dashboard.teams import quota

from . import teamusage
from .models import BackfillPolicy, Job, JobAttempt

GIB = 2**30  # gpu_memory_gb is in GiB, as nvidia-smi and the frameworks count memory


@dataclass
class Gpu:
    index: int
    uuid: str
    free_bytes: float  # of its memory pool
    # Devices that share one memory (the compute instances of a MIG GPU instance) share a pool;
    # "" is a pool of the device's own.
    pool: str = ""

    @property
    def pool_key(self) -> str:
        return self.pool or f"device:{self.index}"


@dataclass
class Capacity:
    machine: Machine
    gpus: list[Gpu]
    active_kinds: set[str] = field(default_factory=set)
    busy: set[int] = field(default_factory=set)  # GPUs an active job was given

    @property
    def free_bytes(self) -> float:
        """Free memory on the machine, each pool counted once."""
        return sum({g.pool_key: g.free_bytes for g in self.gpus}.values())


def _latest_ts(machine: Machine) -> datetime | None:
    if not machine.latest:
        return None
    return datetime.fromtimestamp(machine.latest["ts"], tz=UTC)


def _pool(device: dict) -> str:
    """The memory a device draws from: a MIG device's GPU instance (its compute instances share it)."""
    if device.get("parent_uuid") and device.get("gpu_instance_id") is not None:
        return f"{device['parent_uuid']}/gi:{device['gpu_instance_id']}"
    return ""


def capacity(machine: Machine, active: list[Job]) -> Capacity:
    """What is free on ``machine`` given its telemetry and its active jobs.

    The compute instances of one MIG GPU instance each report the instance's shared memory:
    it is one pool, counted once, and what a job reserves on one of them is gone for all."""
    accelerators = list(machine.accelerators.all())
    parents = {a.parent_uuid for a in accelerators if a.parent_uuid}
    seen_at = _latest_ts(machine)
    pools: dict[int, str] = {}
    pool_free: dict[str, float] = {}
    uuids: dict[int, str] = {}
    for device in devices(accelerators, machine.latest):
        if device.get("uuid") and device["uuid"] in parents:
            continue  # a GPU split into MIG devices is scheduled through its devices
        total, used = device.get("mem_total_bytes"), device.get("mem_used_bytes")
        if total is None or used is None:
            continue  # no telemetry for this device: nothing to promise
        pool = _pool(device)
        pools[device["index"]] = pool
        pool_free.setdefault(pool or f"device:{device['index']}", max(0.0, total - used))
        uuids[device["index"]] = device.get("uuid") or ""

    def key(index: int) -> str:
        return pools[index] or f"device:{index}"

    kinds = set()
    busy: set[int] = set()
    for job in active:
        kinds.add(job.kind)
        busy.update(job.assigned_gpus)
        # Memory a job holds shows in telemetry once it runs; until then it is reserved here.
        unseen = job.status == Job.Status.PLACED or (
            job.started_at is not None and (seen_at is None or job.started_at >= seen_at)
        )
        if unseen:
            for index in job.assigned_gpus:
                if index in pools:
                    pool_free[key(index)] = max(0.0, pool_free[key(index)] - job.gpu_memory_gb * GIB)
    gpus = [Gpu(i, uuids[i], pool_free[key(i)], pools[i]) for i in sorted(pools)]
    return Capacity(machine, gpus, kinds, busy)


def backfills(job: Job, cap: Capacity, backfill_on: bool) -> bool:
    """Whether ``job`` would go onto ``cap`` as backfill: with the policy on, a preemptible training
    job may take the GPUs a machine dedicated to serving leaves free while it serves."""
    return (
        backfill_on
        and job.kind == Job.Kind.TRAIN
        and job.preemptible
        and cap.machine.policy == Machine.Policy.DEDICATED
        and Job.Kind.SERVE in cap.active_kinds
    )


def choose_gpus(job: Job, cap: Capacity, backfill_on: bool = False) -> list[int] | None:
    """The GPUs to give ``job`` on this machine, tightest fit first; None if it does not fit."""
    dedicated_elsewhere = cap.machine.policy == Machine.Policy.DEDICATED and cap.active_kinds - {job.kind}
    backfill = dedicated_elsewhere and backfills(job, cap, backfill_on)
    if dedicated_elsewhere and not backfill:
        return None
    if job.gpus == 0:
        return []
    need = job.gpu_memory_gb * GIB
    # Backfill takes only GPUs no job was given, so training never slows a serving GPU down.
    fitting = sorted(
        (g for g in cap.gpus if g.free_bytes >= need and not (backfill and g.index in cap.busy)),
        key=lambda g: (g.free_bytes, g.index),
    )
    # Two devices of one memory pool each need the job's memory from that pool.
    left = {g.pool_key: g.free_bytes for g in cap.gpus}
    chosen = []
    for g in fitting:
        if left[g.pool_key] >= need:
            left[g.pool_key] -= need
            chosen.append(g.index)
            if len(chosen) == job.gpus:
                return sorted(chosen)
    return None


def why_waiting(job: Job, caps: list[Capacity]) -> str:
    """One sentence saying why nothing fits, for the job's status message."""
    need = job.need
    if not caps:
        if job.target_id:
            return f"needs {need}; {job.target.name} is offline"
        return f"needs {need}; no machine is online"
    dedicated = [c for c in caps if c.machine.policy == Machine.Policy.DEDICATED and c.active_kinds - {job.kind}]
    best: tuple | None = None
    for cap in caps:
        if cap in dedicated or not cap.gpus:
            continue
        enough = [g for g in cap.gpus if g.free_bytes >= job.gpu_memory_gb * GIB]
        largest = max(g.free_bytes for g in cap.gpus)
        key = (len(enough), largest)
        if best is None or key > best[0]:
            best = (key, cap, enough, largest)
    if best is None:
        if dedicated:
            return f"needs {need}; the machines with room are dedicated to the other kind of job"
        return f"needs {need}; no online machine has a GPU with telemetry"
    _, cap, enough, largest = best
    if enough:
        free = f" with {job.gpu_memory_gb:g} GiB free" if job.gpu_memory_gb else " free"
        return f"needs {need}; at most {len(enough)} GPU(s){free}, on {cap.machine.name}"
    return f"needs {need}; the largest free is 1 × {largest / GIB:.0f} GiB on {cap.machine.name}"


def _first_fit(job: Job, candidates: list[Capacity], backfill_on: bool = False) -> tuple[Capacity, list[int]] | None:
    """The fullest machine among ``candidates`` where ``job`` fits, with its GPUs; a backfill
    placement only where no machine takes the job the ordinary way."""
    ordered = sorted(candidates, key=lambda c: sum(g.free_bytes for g in c.gpus))
    for cap in ordered:
        gpus = choose_gpus(job, cap)
        if gpus is not None:
            return cap, gpus
    for cap in (c for c in ordered if backfills(job, c, backfill_on)):
        gpus = choose_gpus(job, cap, backfill_on=True)
        if gpus is not None:
            return cap, gpus
    return None


def _preempt_for(job: Job, caps: list[Capacity], active_by_machine: dict[int, list[Job]]) -> list[Job]:
    """Preemptible training jobs whose stopping would make room for ``job``: those of lower
    priority, and backfill of any priority (serving lent those GPUs; it takes them back)."""
    if job.kind != Job.Kind.SERVE:
        return []
    for cap in caps:
        victims = [
            j
            for j in active_by_machine.get(cap.machine.pk, [])
            if j.kind == Job.Kind.TRAIN
            and j.preemptible
            and (j.priority < job.priority or j.backfill)
            and j.status == Job.Status.RUNNING
        ]
        if not victims:
            continue
        freed = {g.index: g.free_bytes for g in cap.gpus}
        for v in victims:
            for index in v.assigned_gpus:
                if index in freed:
                    freed[index] += v.gpu_memory_gb * GIB
        trial = Capacity(cap.machine, [Gpu(i, "", f) for i, f in freed.items()], set())
        if choose_gpus(job, trial) is not None:
            return victims
    return []


def _borrowers_for(job: Job, caps: list[Capacity], active_by_machine: dict[int, list[Job]]) -> list[Job]:
    """Other teams' borrowing jobs whose preemption would make room for in-quota ``job``
    (``caps`` are the machines it may use as its team's own): dashboard/teams/quota.py."""
    for cap in caps:
        victims = [
            j
            for j in active_by_machine.get(cap.machine.pk, [])
            if j.status == Job.Status.RUNNING and quota.may_preempt(j.team_id, j.borrowing, job.team_id, quota.OWN)
        ]
        if not victims:
            continue
        freed = {g.index: g.free_bytes for g in cap.gpus}
        for v in victims:
            for index in v.assigned_gpus:
                if index in freed:
                    freed[index] += v.gpu_memory_gb * GIB
        if choose_gpus(job, Capacity(cap.machine, [Gpu(i, "", f) for i, f in freed.items()], set())) is not None:
            return victims
    return []


# The key of the PostgreSQL advisory lock that serialises placement passes ("hwdp").
PLACEMENT_LOCK = 0x68776470


def _one_pass_at_a_time() -> None:
    """Hold the placement lock until the transaction ends; SQLite already serialises writers."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PLACEMENT_LOCK])


@dataclass
class Placement:
    job_id: int
    attempt: int
    machine: str


def place_queued(now: datetime | None = None) -> list[Placement]:
    """Place every queued job that fits: highest priority first, then the team with the highest
    fair-share factor, then first come first served; within its team's quota, or as a borrower."""
    now = now or timezone.now()
    placed: list[Placement] = []
    with transaction.atomic():
        # One pass at a time: a second scheduler waits on this lock, not on machine rows (which
        # ingest and the pages would then wait on too). Telemetry read a moment early is no worse
        # than what a locked row held; the reservations of placed jobs are what must not race.
        _one_pass_at_a_time()
        queued = list(
            Job.objects.select_for_update(of=("self",))
            .filter(status=Job.Status.QUEUED, cancel_requested=False)
            .select_related("target", "team")
            .order_by("-priority", "created_at", "pk")
        )
        if not queued:
            return placed
        backfill_on = BackfillPolicy.is_on()  # turning it off requeues backfill (service.set_backfill)
        # Accelerators are read once per pass: capacity() is recomputed after every placement. Only
        # when a job waits: at 10,000 machines reading them took ~6 s of every 15 s tick.
        machines = list(Machine.objects.order_by("pk").prefetch_related("accelerators"))
        # Teams (dashboard/teams/): fair-share order within a priority, quotas, borrowing.
        share = teamusage.fair_share(now)
        queued.sort(key=lambda j: (-j.priority, -share.get(j.team_id, 1.0), j.created_at, j.pk))
        usage = teamusage.quota_usage({j.team for j in queued}, now)
        borrowers: list[tuple[Job, quota.Decision, list[Capacity]]] = []  # placed after the in-quota jobs
        active = list(Job.objects.filter(status__in=Job.ACTIVE, machine__isnull=False))
        active_by_machine: dict[int, list[Job]] = {}
        for j in active:
            active_by_machine.setdefault(j.machine_id, []).append(j)
        online = [m for m in machines if m.is_online(now)]
        caps = {m.pk: capacity(m, active_by_machine.get(m.pk, [])) for m in online}
        # Written in bulk at the end of the pass: one statement per kind, not two per job.
        placed_jobs: list[Job] = []
        attempts: list[JobAttempt] = []
        waiting: list[Job] = []

        def book(job: Job, cap: Capacity, gpus: list[int], borrowing: bool) -> None:
            job.backfill = backfills(job, cap, backfill_on)
            job.status = Job.Status.PLACED
            job.machine = cap.machine
            job.assigned_gpus = gpus
            job.attempt += 1
            job.placed_at = now
            job.borrowing = borrowing
            job.status_message = (
                f"placed on {cap.machine.name}"
                + (f", GPU {', '.join(map(str, gpus))}" if gpus else "")
                + (" (borrowing: preemptible when the owners need it)" if borrowing else "")
                + (" as backfill: serving here takes the GPUs back when it needs them" if job.backfill else "")
            )
            placed_jobs.append(job)
            attempts.append(JobAttempt(job=job, number=job.attempt, machine=cap.machine, gpus=gpus, placed_at=now))
            # Book it in this pass too, so the next queued job sees the memory as taken.
            active_by_machine.setdefault(cap.machine.pk, []).append(job)
            caps[cap.machine.pk] = capacity(cap.machine, active_by_machine[cap.machine.pk])
            placed.append(Placement(job.pk, job.attempt, cap.machine.name))

        def wait(job: Job, message: str) -> None:
            if job.status_message != message:
                job.status_message = message
                waiting.append(job)

        for job in queued:
            decision = quota.decide(job.team, usage[job.team_id], job.gpus, job.preemptible)
            candidates = (
                [caps[job.target_id]] if job.target_id in caps else ([] if job.target_id else list(caps.values()))
            )
            uses = {
                c.machine.pk: quota.machine_use(job.team_id, c.machine.team_id, decision, job.preemptible)
                for c in candidates
            }
            own = [c for c in candidates if uses[c.machine.pk] == quota.OWN]
            choice = _first_fit(job, own, backfill_on)
            if choice is not None:
                book(job, *choice, borrowing=False)
                usage[job.team_id].gpus += job.gpus
                continue
            victims = [] if decision.wait else _borrowers_for(job, own, active_by_machine)
            borrowable = [c for c in candidates if uses[c.machine.pk] is not None]
            if not victims and any(uses[c.machine.pk] == quota.BORROW for c in borrowable):
                borrowers.append((job, decision, borrowable))
                continue
            victims = victims or _preempt_for(job, own, active_by_machine)
            message = decision.wait or why_waiting(job, own or candidates)
            if not decision.wait and candidates and not own:
                message += "; those machines belong to other teams, which lend only to preemptible jobs"
            if victims:
                Job.objects.filter(pk__in=[v.pk for v in victims]).update(preempt_requested=True)
                what = "borrowing job(s)" if victims[0].borrowing else "training job(s)"
                message += f"; preempting {what} " + ", ".join(f"#{v.pk}" for v in victims)
            wait(job, message)

        # Borrowers take only what every in-quota job of this pass left idle.
        for job, decision, borrowable in borrowers:
            choice = _first_fit(job, [caps[c.machine.pk] for c in borrowable], backfill_on)
            if choice is None:
                over = "; over its team's quota, it may only borrow idle GPUs" if decision.borrow else ""
                wait(job, why_waiting(job, borrowable) + over)
                continue
            book(job, *choice, borrowing=True)

        fields = [
            "status",
            "machine",
            "assigned_gpus",
            "attempt",
            "placed_at",
            "status_message",
            "borrowing",
            "backfill",
        ]
        Job.objects.bulk_update(placed_jobs, fields, batch_size=500)
        Job.objects.bulk_update(waiting, ["status_message"], batch_size=500)
        # The (job, number) unique constraint is the last line of defence against a double start.
        JobAttempt.objects.bulk_create(attempts, batch_size=500)
    return placed
