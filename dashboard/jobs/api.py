"""JSON API for jobs: users submit, read and cancel; a machine's worker claims and reports."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Query, Router, Status
from ninja.errors import HttpError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dashboard.accounts.auth import USER_AUTH
from dashboard.core.periods import required_range
from dashboard.fleet import series, visibility
from dashboard.fleet import throughput as telemetry_throughput
from dashboard.fleet.auth import AgentAuth
from dashboard.fleet.models import Machine
from dashboard.teams import access as team_access
from dashboard.teams.models import Team

from . import allowlist, feasibility, queries, service, throughput, wakeup
from .models import MAX_PARAMS_B, Job
from .tasks import PROGRESS_PRESETS

router = Router(tags=["jobs"])
agent_router = Router(tags=["agent"])


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "5" is not 5 and false is not 0

    name: Annotated[str, Field(min_length=1, max_length=200)]
    kind: Literal["train", "serve"]
    command: (
        Annotated[list[Annotated[str, Field(max_length=4096)]], Field(min_length=1, max_length=256)]
        | Annotated[str, Field(min_length=1, max_length=8192)]
    )
    machine: str | None = None
    gpus: Annotated[int, Field(ge=0, le=64)] = 1
    gpu_memory_gb: Annotated[float, Field(ge=0, le=4096, allow_inf_nan=False)] = 0
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    max_runtime_s: Annotated[int, Field(ge=1, le=30 * 86400)] | None = None
    workdir: Annotated[str, Field(max_length=1024)] = ""
    env: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)],
        Annotated[str, Field(max_length=4096)],
    ] = {}
    # Names in env whose values only the owner and admins see, besides *TOKEN*, *KEY*... (jobs/masking.py).
    secret_env: Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=256)] = []
    preemptible: bool = False
    metrics_url: Annotated[str, Field(max_length=500, pattern=r"^https?://[^\s]+$")] | None = None
    progress_pattern: Annotated[str, Field(max_length=500)] = ""
    # The model, when the submitter knows it; economics otherwise reads it from name and command.
    model_params_b: Annotated[float, Field(gt=0, le=MAX_PARAMS_B, allow_inf_nan=False)] | None = None
    precision: Annotated[Job.Precision, Field(strict=False)] | None = None  # strict would want the enum itself
    context_tokens: Annotated[int, Field(ge=1, le=100_000_000)] | None = None
    team: Annotated[str, Field(max_length=64)] | None = None  # a team's slug; default: the user's only team

    @model_validator(mode="after")
    def only_training_is_preemptible(self) -> JobIn:
        if self.preemptible and self.kind != "train":
            raise ValueError("preemptible: only training jobs can be preempted")
        unknown = [name for name in self.secret_env if name not in self.env]
        if unknown:
            raise ValueError(f"secret_env: {unknown[0]} is not a variable in env")
        if self.progress_pattern and self.progress_pattern not in PROGRESS_PRESETS:
            try:
                pattern = re.compile(self.progress_pattern)
            except re.error as exc:
                raise ValueError(f"progress_pattern: not a valid regular expression ({exc})") from None
            if "tokens" not in pattern.groupindex:
                raise ValueError(
                    "progress_pattern: needs a named group (?P<tokens>...) or a preset: " + ", ".join(PROGRESS_PRESETS)
                )
        return self


def _raise(exc: service.JobError):
    raise HttpError(exc.status, str(exc))


def _visible_job(request, job_id: int) -> Job:
    """The job if one of the user's teams may see it (dashboard/teams/access.py), else a 404."""
    return get_object_or_404(team_access.scope_jobs(Job.objects.all(), request.user), pk=job_id)


IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as in the IETF draft's examples


def _idempotency(request, payload: JobIn) -> tuple[str, str] | None:
    """(key, the body's digest) when the client sent ``Idempotency-Key``; a malformed key is a 400."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise HttpError(400, "Idempotency-Key: 1 to 255 visible ASCII characters (a UUID is a good key)")
    return key, service.request_sha256(payload.model_dump(mode="json"))


@router.post(
    "/jobs",
    auth=USER_AUTH,
    response={200: dict, 201: dict},
    summary="Submit a training or serving job (operators and admins); honours an Idempotency-Key header",
)
def submit(request, payload: JobIn):
    idempotency = _idempotency(request, payload)
    if idempotency is not None:
        try:  # a retry answers with the job the first call made, before any check that could now differ
            earlier = service.earlier_submission(request.user, *idempotency)
        except service.JobError as exc:
            _raise(exc)
        if earlier is not None:
            return Status(200, queries.job_dict(earlier, viewer=request.user))
    target = None
    visible = visibility.visible_machine_ids(request.user)
    if payload.machine:
        target = visibility.visible_machines(request.user).filter(name=payload.machine).first()
        if target is None:
            raise HttpError(400, f"machine: no machine named {payload.machine!r}")
    fields = payload.model_dump(exclude={"command", "machine", "team"})
    if payload.team:
        team = Team.objects.filter(slug=payload.team).first()
        if team is None or not team_access.can_see(request.user, team.pk):
            raise HttpError(400, f"team: no team named {payload.team!r}")
        fields["team"] = team
    if isinstance(payload.command, str):
        fields.update(argv=None, shell=payload.command)
    else:
        fields.update(argv=payload.command, shell="")
    refused = feasibility.refusal(payload.gpus, payload.gpu_memory_gb, payload.machine, visible)
    if refused:  # no machine could ever take it: waiting would be forever
        raise HttpError(400, f"{refused[0]}: {refused[1]}")
    if target is not None:
        # What the target's worker reported it allows: refuse now what it would refuse on arrival.
        reason = allowlist.refusal(target, fields["argv"], fields["shell"], fields["workdir"] or None)
        if reason:
            raise HttpError(400, f"command: {reason}")
    denied = allowlist.env_refusal(target, fields["env"], Machine.objects.all())
    if denied:  # the host would refuse it on arrival (LD_PRELOAD, PYTHONPATH...): refuse it now
        raise HttpError(400, f"env: {denied}")
    try:
        if idempotency is None:
            job, created = service.submit(request.user, {**fields, "target": target}), True
        else:
            job, created = service.submit_once(request.user, {**fields, "target": target}, *idempotency)
    except service.JobError as exc:
        _raise(exc)
    return Status(201 if created else 200, queries.job_dict(job, viewer=request.user))


@router.get("/jobs/placement", auth=USER_AUTH, summary="Whether a job of this size could ever run, and where now")
def placement_check(request, gpus: int = 1, gpu_memory_gb: float = 0, kind: str = "train", machine: str = ""):
    """`refusal` is why no machine could ever take it (or null); `ready` the online machines with room now.
    Only machines the user's teams see (and the shared pool) are named; another team's is no machine."""
    visible = visibility.visible_machine_ids(request.user)
    refused = feasibility.refusal(gpus, gpu_memory_gb, machine or None, visible)
    return {
        "refusal": {"field": refused[0], "error": refused[1]} if refused else None,
        "ready": [] if refused else feasibility.ready_now(gpus, gpu_memory_gb, kind, machine or None, visible),
    }


@router.get("/jobs", auth=USER_AUTH, summary="Jobs, newest first, filtered by status, machine, kind, owner")
def jobs(
    request,
    status: str | None = None,
    machine: str | None = None,
    kind: str | None = None,
    owner: str | None = None,
    limit: int = Query(100, ge=1, le=1000),  # type: ignore[type-arg]
):
    visible = team_access.scope_jobs(queries.job_list(status, machine, kind, owner), request.user)
    jobs = list(visible[: max(1, min(limit, 1000))])
    summaries = throughput.job_summaries([j.pk for j in jobs])
    return {"jobs": [{**queries.job_dict(j, viewer=request.user), "throughput": summaries.get(j.pk)} for j in jobs]}


@router.get("/jobs/{job_id}", auth=USER_AUTH, summary="One job with its attempts")
def job(request, job_id: int):
    return queries.job_dict(_visible_job(request, job_id), attempts=True, viewer=request.user)


@router.get(
    "/jobs/{job_id}/series", auth=USER_AUTH, summary="The job's tokens/s (tokens.*) or its GPUs' metrics (gpu.*)"
)
def job_series(request, job_id: int, metric: str, since: str | None = None, until: str | None = None):
    job = _visible_job(request, job_id)
    start, end = required_range(since, until) if since else queries.job_span(job)
    if metric in telemetry_throughput.METRICS:
        return throughput.job_series(job, metric, start, end)
    if not metric.startswith("gpu.") or job.machine is None:
        raise HttpError(
            400, f"metric: expected one of {', '.join(sorted(telemetry_throughput.METRICS))} or gpu.* for a placed job"
        )
    try:
        data = series.machine_series(job.machine, metric, start, end)
    except series.SeriesError as exc:
        raise HttpError(400, str(exc)) from None
    data["series"] = [s for s in data["series"] if s["device"] in job.assigned_gpus]
    data["job"] = job.pk
    return data


@router.get("/jobs/{job_id}/log", auth=USER_AUTH, summary="Log chunks after a given id (for live tailing)")
def job_log(request, job_id: int, after: int = 0):
    return queries.job_log(_visible_job(request, job_id), after, viewer=request.user)


@router.post("/jobs/{job_id}/cancel", auth=USER_AUTH, summary="Cancel a job (its owner or an admin)")
def cancel(request, job_id: int):
    try:
        job = service.cancel(request.user, _visible_job(request, job_id))
    except service.JobError as exc:
        _raise(exc)
    return queries.job_dict(job, viewer=request.user)


# ---- for `python -m hwprobe worker`, authenticated by the machine's agent token -------------


class AttemptIn(BaseModel):
    attempt: Annotated[int, Field(ge=1)]


class HeartbeatIn(AttemptIn):
    pid: int | None = None
    pgid: int | None = None


class Chunk(BaseModel):
    seq: Annotated[int, Field(ge=0, le=2**31)]
    stream: Literal["stdout", "stderr"]
    text: Annotated[str, Field(max_length=65536)]
    ts: Annotated[float, Field(ge=0, le=4e9, allow_inf_nan=False)]  # Unix seconds


class LogIn(AttemptIn):
    chunks: Annotated[list[Chunk], Field(max_length=1000)]


class FinishIn(AttemptIn):
    outcome: Literal["succeeded", "failed", "cancelled", "timeout", "preempted", "refused"]
    exit_code: int | None = None
    message: Annotated[str, Field(max_length=2000)] = ""


class TemplateIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    argv: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]], Field(min_length=1, max_length=256)]
    workdir: Annotated[str, Field(min_length=1, max_length=1024)] | None = None

    @model_validator(mode="after")
    def double_star_is_last(self) -> TemplateIn:
        # The same shape hwprobe.policy accepts, so the server can match with hwprobe's rules.
        if self.argv[0] == "**" or "**" in self.argv[:-1]:
            raise ValueError('argv: "**" may only be the last pattern, after a program')
        return self


class PolicyIn(BaseModel):
    """``hwprobe.policy.Policy.summary()``: what the host lets its worker run."""

    builtin_workloads: bool
    allow_shell: bool
    run_as: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    templates: Annotated[list[TemplateIn], Field(max_length=200)]
    # Variable names (fnmatch) it refuses in a job's env; None from workers older than this field.
    deny_env: Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=200)] | None = None


@agent_router.get("/agent/config", auth=AgentAuth(), summary="This machine's name and how its worker takes jobs")
def agent_config(request):
    # No broker here: hosts take their jobs over this API, never from the server's Celery broker.
    return {
        "machine": request.auth.machine.name,
        "jobs": "/api/v1/agent/jobs/next",
        "poll_wait_s": settings.JOB_POLL_WAIT_S,
    }


def _agent_call(fn, *args):
    try:
        return fn(*args)
    except service.JobError as exc:
        _raise(exc)


class HeldIn(BaseModel):
    job: Annotated[int, Field(ge=1)]
    attempt: Annotated[int, Field(ge=1)]


class NextIn(BaseModel):
    # The worker's own id (kept in its spool, so it survives restarts): the attempts it took are its own.
    worker: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
    # Every attempt it runs or still has reports of: an attempt it took and no longer holds is over.
    held: Annotated[list[HeldIn], Field(max_length=1000)] = []
    # How long to wait for a job before answering 204 (at most JOB_POLL_WAIT_S).
    wait_s: Annotated[float, Field(ge=0, le=300, allow_inf_nan=False)] = 25


@agent_router.post(
    "/agent/jobs/next",
    auth=AgentAuth(),
    response={200: dict, 204: None},
    summary="The next job placed on this machine, taken (running) for this worker; 204 when none comes in time",
)
def next_job(request, payload: NextIn):
    machine = request.auth.machine
    service.reconcile(machine, payload.worker, {(h.job, h.attempt) for h in payload.held})
    job = wakeup.wait_for(
        lambda: service.claim_next(machine, payload.worker),
        machine.pk,
        min(payload.wait_s, settings.JOB_POLL_WAIT_S),
    )
    if job is None:
        return Status(204, None)
    return {"job_id": job.pk, "attempt": job.attempt, "spec": service.spec(job)}


@agent_router.post("/agent/jobs/{job_id}/heartbeat", auth=AgentAuth())
def heartbeat(request, job_id: int, payload: HeartbeatIn):
    return _agent_call(service.heartbeat, request.auth.machine, job_id, payload.attempt, payload.pgid)


@agent_router.post("/agent/jobs/{job_id}/log", auth=AgentAuth())
def log(request, job_id: int, payload: LogIn):
    new = _agent_call(
        service.append_log, request.auth.machine, job_id, payload.attempt, [c.model_dump() for c in payload.chunks]
    )
    return {"stored": new}


@agent_router.post("/agent/jobs/{job_id}/finish", auth=AgentAuth())
def finish(request, job_id: int, payload: FinishIn):
    _agent_call(
        service.finish,
        request.auth.machine,
        job_id,
        payload.attempt,
        payload.outcome,
        payload.exit_code,
        payload.message,
    )
    return {"ok": True}


@agent_router.post("/agent/policy", auth=AgentAuth(), summary="What this machine's worker allows, for the submit form")
def agent_policy(request, payload: PolicyIn):
    # update(), not save(): ingest writes other columns of the same row concurrently.
    Machine.objects.filter(pk=request.auth.machine.pk).update(
        worker_policy=payload.model_dump(), worker_seen_at=timezone.now()
    )
    return {"ok": True, "templates": len(payload.templates)}
