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
    PrivateAttr,
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


def _gauge(name: str, lo: float, hi: float) -> Any:
    # A TypedDict is validated without building a Python object per gauge (about 3x faster than
    # a model for the 64 gauges of an 8-GPU sample); Batch's check then tests their order.
    value = Annotated[float, Field(allow_inf_nan=False, ge=lo, le=hi)]
    fields = {"min": value, "mean": value, "max": value}
    return with_config(ConfigDict(strict=True, extra="ignore"))(TypedDict(name, fields))  # type: ignore[operator]


PercentGauge = _gauge("PercentGauge", 0.0, 100.0)
Gauge = _gauge("Gauge", 0.0, 1e18)
SignedGauge = _gauge("SignedGauge", -273.15, 1e18)  # temperatures


class Layout:
    """A payload's metrics in the sample tables' column order: a gauge is three columns (min,
    mean, max), any other metric one. ``values`` lays a validated payload out and checks each
    gauge's order on the way, in one pass: ingest stores exactly this list, so the check and the
    row cost one walk over the ~100 values of a GPU instead of two (bench/README.md, issue 13)."""

    def __init__(self, metrics: tuple[Metric, ...]) -> None:
        self.names = tuple(m.name for m in metrics)
        self.gauges = tuple(m.kind == "gauge" for m in metrics)
        self._get = itemgetter(*self.names)

    def values(self, fields: dict[str, Any]) -> list[Any] | None:
        """The values in column order, or None when a gauge breaks min <= mean <= max."""
        out: list[Any] = []
        add = out.append
        for value, gauge in zip(self._get(fields), self.gauges):  # noqa: B905 (same length by construction)
            if not gauge:
                add(value)
            elif value is None:
                out += _NO_GAUGE
            else:
                low, mean, top = value["min"], value["mean"], value["max"]
                if low <= mean <= top or _within_rounding(low, mean, top):
                    out += (low, mean, top)
                else:
                    return None
        return out

    def first_unordered(self, fields: dict[str, Any]) -> str:
        """The name of the first gauge ``values`` refused (the slow path: a refused batch only)."""
        for name, gauge in zip(self.names, self.gauges, strict=True):
            value = fields[name]
            if gauge and value is not None and not _within_rounding(*_STATS(value)):
                return name
        return "body"


_NO_GAUGE = (None, None, None)
_STATS = itemgetter("min", "mean", "max")


def _within_rounding(low: float, mean: float, top: float) -> bool:
    # Tolerate float rounding in the agent's mean; computed only when the plain comparison fails.
    slack = 1e-9 * max(1.0, abs(top))
    return low - slack <= mean <= top + slack


def _metric_type(metric: Metric) -> Any:
    if metric.kind == "gauge":
        return (PercentGauge if metric.percent else Gauge if metric.non_negative else SignedGauge) | None
    if metric.integer:
        return Annotated[int, Field(ge=0, le=MAX_BIGINT)] | None
    return Annotated[float, Field(ge=0, le=1e18, allow_inf_nan=False)] | None


def _model(name: str, metrics: tuple[Metric, ...], **extra: Any) -> type[Strict]:
    fields = {m.name: (_metric_type(m), None) for m in metrics}
    fields.update(extra)
    return create_model(name, __base__=Strict, **fields)


SYSTEM_LAYOUT, GPU_LAYOUT = Layout(SYSTEM_METRICS), Layout(GPU_METRICS)


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


LaidOut = list[tuple[list[Any], list[list[Any]]]]  # per sample: system values, each GPU's values


class Batch(Strict):
    agent_version: Annotated[Text, Field(max_length=32)] = ""
    spool_id: Annotated[Text, Field(min_length=1, max_length=64)] | None = None
    dropped: Annotated[int, Field(ge=0, le=MAX_BIGINT)] = 0  # samples the agent's full spool discarded
    refused: Annotated[int, Field(ge=0, le=MAX_BIGINT)] = 0  # samples set aside after a 400/409 (dead letters)
    inventory: Inventory | None = None
    samples: list[Sample] = Field(min_length=1, max_length=MAX_SAMPLES)
    # Each sample's metrics as ingest stores them, laid out while their gauges' order is checked.
    _laid_out: LaidOut | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def distinct_seqs_and_ordered_gauges(self) -> Batch:
        seqs = [s.seq for s in self.samples]
        if len(seqs) != len(set(seqs)):
            raise ValueError("samples: a seq appears twice in one batch")
        self._laid_out = self._lay_out()
        return self

    def laid_out(self) -> LaidOut:
        """Per sample (same order as ``samples``): the system's values and each GPU's, in column order."""
        if self._laid_out is None:  # a batch built without validation (model_construct)
            self._laid_out = self._lay_out()
        return self._laid_out

    def _lay_out(self) -> LaidOut:
        out: LaidOut = []
        for i, sample in enumerate(self.samples):
            fields = sample.system.__dict__
            system = SYSTEM_LAYOUT.values(fields)
            if system is None:
                raise ValueError(f"samples[{i}].system.{SYSTEM_LAYOUT.first_unordered(fields)}: {UNORDERED}")
            gpus = []
            for j, gpu in enumerate(sample.gpus):
                fields = gpu.__dict__
                values = GPU_LAYOUT.values(fields)
                if values is None:
                    raise ValueError(f"samples[{i}].gpus[{j}].{GPU_LAYOUT.first_unordered(fields)}: {UNORDERED}")
                gpus.append(values)
            out.append((system, gpus))
        return out


UNORDERED = "must satisfy min <= mean <= max"


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
