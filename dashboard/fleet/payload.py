"""Validation of the agent's batches (docs/design.md, "Wire format").

Models are built from ``hwprobe.schema`` so every metric the agent may send is checked for type,
range and finiteness. Unknown fields are ignored, so a newer agent can talk to an older server.
"""

from __future__ import annotations

import re
import time
from operator import itemgetter
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from dashboard.core.validation import first_problem
from hwprobe.schema import GPU_METRICS, SYSTEM_METRICS, Metric

MAX_SAMPLES = 1000
MAX_DEVICES = 64
MAX_BIGINT = 2**63 - 1  # PostgreSQL's bigint: byte counts and ids
# A window's seq stays a JSON-safe integer: past 2**53 a client that reads numbers as doubles
# (JavaScript, many JSON libraries) rounds it, and two windows would share a seq. At one window a
# second that is 285 million years of numbering. It also leaves room below MAX_BIGINT for the
# offset a reinstalled agent's new spool gets (ingest._seq_offset): 1,023 spools ending at 2**53.
MAX_SEQ = 2**53 - 1
EARLIEST_TS = 946684800.0  # 2000-01-01: anything older is a broken clock, not history

Finite = Annotated[float, Field(allow_inf_nan=False)]
# The batch's text is plain ``str`` here, checked in Rust: the one character JSON can carry that the
# databases cannot store, NUL, is looked for in the body as a whole by ``parse_batch`` (a lone
# surrogate is already invalid JSON to pydantic). Per-string Python validators (core.validation.Text)
# were called 240 times for a 10-window batch of 8 GPUs (bench/README.md, issue 13).
Text = str
Name = Annotated[Text, Field(max_length=255)]
OptionalName = Annotated[Text, Field(max_length=255)] | None  # null: the agent could not read it


class Strict(BaseModel):
    # strict: "5" is not 5 and true is not 1; extra fields from newer agents are ignored.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class Stats(dict):
    """A gauge over a window, ``{"min", "mean", "max"}``; also read as ``stats.mean``."""

    __slots__ = ()
    min = property(itemgetter("min"))
    mean = property(itemgetter("mean"))
    max = property(itemgetter("max"))


def _gauge(name: str, lo: float, hi: float) -> Any:
    # A TypedDict is validated without building a Python object per gauge (about 3x faster than
    # a model for the 64 gauges of an 8-GPU sample); the payload's validator checks their order.
    value = Annotated[float, Field(allow_inf_nan=False, ge=lo, le=hi)]
    fields = {"min": value, "mean": value, "max": value}
    return with_config(ConfigDict(strict=True, extra="ignore"))(TypedDict(name, fields))  # type: ignore[operator]


PercentGauge = _gauge("PercentGauge", 0.0, 100.0)
Gauge = _gauge("Gauge", 0.0, 1e18)
SignedGauge = _gauge("SignedGauge", -273.15, 1e18)  # temperatures


def _ordered(gauges: tuple[str, ...]) -> Any:
    """An after-validator: each gauge has min <= mean <= max; gauges become ``Stats``."""

    def check(payload: Strict) -> Strict:
        values = payload.__dict__
        for name in gauges:
            value = values[name]
            if value is None:
                continue
            low, mean, top = value["min"], value["mean"], value["max"]
            if not low <= mean <= top:
                # Tolerate float rounding in the agent's mean (computed only when needed: this
                # loop runs for 168 gauges per 8-GPU window).
                slack = 1e-9 * max(1.0, abs(top))
                if not (low - slack <= mean <= top + slack):
                    raise ValueError(f"{name}: must satisfy min <= mean <= max")
            values[name] = Stats(value)
        return payload

    return model_validator(mode="after")(check)


def _metric_type(metric: Metric) -> Any:
    if metric.kind == "gauge":
        return (PercentGauge if metric.percent else Gauge if metric.non_negative else SignedGauge) | None
    if metric.integer:
        return Annotated[int, Field(ge=0, le=MAX_BIGINT)] | None
    return Annotated[float, Field(ge=0, le=1e18, allow_inf_nan=False)] | None


def _model(name: str, metrics: tuple[Metric, ...], **extra: Any) -> type[Strict]:
    fields = {m.name: (_metric_type(m), None) for m in metrics}
    fields.update(extra)
    gauges = tuple(m.name for m in metrics if m.kind == "gauge")
    return create_model(name, __base__=Strict, __validators__={"ordered": _ordered(gauges)}, **fields)


class Process(Strict):
    pid: Annotated[int, Field(ge=0, le=2**32)]
    name: Annotated[Text, Field(max_length=255)] | None = None
    user: Annotated[Text, Field(max_length=255)] | None = None
    pgid: Annotated[int, Field(ge=0, le=2**32)] | None = None  # ties the process to a job
    exists: bool | None = None  # in the host's process table (False: NVML lists a pid that is gone)
    mem_used_bytes: Annotated[int, Field(ge=0, le=MAX_BIGINT)] | None = None


SystemPayload = _model(
    "SystemPayload",
    SYSTEM_METRICS,
    cpu_per_core_percent=(
        list[Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]] | None,
        Field(None, max_length=4096),
    ),
)
GpuPayload = _model(
    "GpuPayload",
    GPU_METRICS,
    index=(Annotated[int, Field(ge=0, le=255)], ...),
    uuid=(Annotated[Text, Field(max_length=128)] | None, None),
    processes=(list[Process] | None, Field(None, max_length=1024)),
)


TokenCountValue = Annotated[int, Field(ge=0, le=10**15)]


TokenPoint = Annotated[
    list[Annotated[float, Field(ge=0, le=10**15, allow_inf_nan=False)]], Field(min_length=5, max_length=5)
]


class TokenCount(Strict):
    """Tokens produced during the window, by one job (or none) through one source."""

    job_id: Annotated[int, Field(ge=1, le=MAX_BIGINT)] | None = None
    source: Literal["progress", "prometheus", "ollama", "report"]
    prompt: TokenCountValue = 0
    generated: TokenCountValue = 0
    train: TokenCountValue = 0
    # Seconds of work the counts took, and the counts per measured second as
    # [end_ts, active_s, prompt, generated, train]; older agents send neither.
    active_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)] | None = None
    points: list[TokenPoint] | None = Field(default=None, max_length=600)


class Sample(Strict):
    seq: Annotated[int, Field(ge=1, le=MAX_SEQ)]
    ts: Finite
    interval_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)]
    count: Annotated[int, Field(ge=0, le=86400)]
    system: SystemPayload = Field(default_factory=SystemPayload)  # type: ignore[valid-type]
    gpus: list[GpuPayload] = Field(default_factory=list, max_length=MAX_DEVICES)  # type: ignore[valid-type]
    tokens: list[TokenCount] = Field(default_factory=list, max_length=256)
    tokens_dropped: Annotated[int, Field(ge=0, le=10**12)] = 0  # token reports the agent could not use
    report_udp: bool | None = None  # whether the agent's UDP report port listened (None: turned off)

    @field_validator("ts")
    @classmethod
    def plausible_time(cls, ts: float) -> float:
        from django.conf import settings

        if ts < EARLIEST_TS:
            raise ValueError("is before 2000-01-01: check the agent's clock")
        if ts > time.time() + settings.INGEST_MAX_FUTURE_S:
            raise ValueError("is in the future: check the agent's clock")
        return ts

    @model_validator(mode="after")
    def distinct_devices(self) -> Sample:
        indexes = [g.index for g in self.gpus]
        if len(indexes) != len(set(indexes)):
            raise ValueError("gpus: a device index appears twice")
        keys = [(t.job_id, t.source) for t in self.tokens]
        if len(keys) != len(set(keys)):
            raise ValueError("tokens: a (job_id, source) pair appears twice")
        return self


class InventoryAccelerator(Strict):
    index: Annotated[int, Field(ge=0, le=255)]
    vendor: Annotated[Text, Field(max_length=32)] | None = "unknown"
    name: OptionalName = ""
    uuid: Annotated[Text, Field(max_length=128)] | None = None
    mem_total_bytes: Annotated[int, Field(ge=0, le=MAX_BIGINT)] | None = None
    power_limit_watts: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] | None = None
    parent_uuid: Annotated[Text, Field(max_length=128)] | None = None
    mig_profile: Annotated[Text, Field(max_length=64)] | None = None
    gpu_instance_id: Annotated[int, Field(ge=0, le=2**32)] | None = None
    compute_instance_id: Annotated[int, Field(ge=0, le=2**32)] | None = None
    gpm_supported: bool | None = None
    driver: Annotated[Text, Field(max_length=64)] | None = None


class Inventory(Strict):
    hostname: OptionalName = ""
    os: OptionalName = ""
    cpu_model: OptionalName = ""
    cpu_cores: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    cpu_threads: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    mem_total_bytes: Annotated[int, Field(ge=0, le=MAX_BIGINT)] | None = None
    storage_read_bytes_per_s: Annotated[float, Field(ge=0, le=1e13, allow_inf_nan=False)] | None = None
    accelerators: list[InventoryAccelerator] = Field(default_factory=list, max_length=MAX_DEVICES)

    @model_validator(mode="after")
    def distinct_devices(self) -> Inventory:
        indexes = [a.index for a in self.accelerators]
        if len(indexes) != len(set(indexes)):
            raise ValueError("accelerators: a device index appears twice")
        return self


class Batch(Strict):
    agent_version: Annotated[Text, Field(max_length=32)] = ""
    spool_id: Annotated[Text, Field(min_length=1, max_length=64)] | None = None
    dropped: Annotated[int, Field(ge=0, le=MAX_BIGINT)] = 0
    inventory: Inventory | None = None
    samples: list[Sample] = Field(min_length=1, max_length=MAX_SAMPLES)

    @model_validator(mode="after")
    def distinct_seqs(self) -> Batch:
        seqs = [s.seq for s in self.samples]
        if len(seqs) != len(set(seqs)):
            raise ValueError("samples: a seq appears twice in one batch")
        return self


class PayloadError(ValueError):
    """A batch we refuse; ``str()`` is one readable sentence naming the field."""


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue  # pydantic's internal steps for unions and validators
        else:
            out += f".{part}" if out else str(part)
    return out


_FIELD_PREFIX = re.compile(r"[a-z_]+: ")


def parse_batch(body: bytes | str) -> Batch:
    """Validate a JSON body; raise PayloadError with the first problem found."""
    try:
        batch = Batch.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # Unions report one error per branch; the None branch's complaint says nothing useful.
        useful = [e for e in errors if e["type"] != "none_required"] or errors
        first = useful[0]
        where = _where(tuple(first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        if not where:  # a batch-level check names its own field in the message
            where, _, message = message.partition(": ") if ": " in message else ("body", "", message)
        elif _FIELD_PREFIX.match(message):  # a model's check names the field it is about
            suffix, _, message = message.partition(": ")
            where = f"{where}.{suffix}"
        if first["type"] == "json_invalid":  # a lone surrogate escape (\ud800) is refused here too
            where, message = "body", f"is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
        more = f" (and {len(useful) - 1} more problem(s))" if len(useful) > 1 else ""
        raise PayloadError(f"{where}: {message}{more}") from None
    # JSON can carry a NUL only as the escape \u0000 (a raw control character is invalid JSON), so
    # a body without that escape holds none; one with it is searched field by field, known fields
    # only, to name where it is.
    if (b"\\u0000" if isinstance(body, bytes) else "\\u0000") in body:
        found = first_problem(batch.model_dump())
        if found:
            raise PayloadError(found)
    return batch
