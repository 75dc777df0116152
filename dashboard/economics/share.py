"""Share or split: what co-locating training and serving on one machine does to each.

From the machine's windows with tokens, each is classed by which kinds of job had an attempt
running during it: serving alone, training alone, or both. Rates are tokens over the length of
the windows of each class.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from dashboard.fleet.models import Machine

from .hardware import attempts, job_model, kinds_by_window, windows

DEFAULT_SPAN = timedelta(days=30)
MIN_SECONDS = 300  # five minutes of windows in a class before a rate is trusted
RUN_HINT = {
    "serve": "python -m hwprobe.workloads serve --seconds 600 --load 4",
    "train": "python -m hwprobe.workloads train --seconds 600",
}


def share_or_split(machine: Machine, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    now = timezone.now()
    until = until or now
    since = since or until - DEFAULT_SPAN
    ws = windows(machine, since, until)
    spans = attempts(machine, since, until)
    kinds = kinds_by_window(spans, ws, now)
    classes = {"serve_alone": [0, 0.0], "train_alone": [0, 0.0], "together_serve": [0, 0.0], "together_train": [0, 0.0]}
    together_s = 0.0
    for seq, w in ws.items():
        k = kinds.get(seq, set())
        if k == {"serve"}:
            classes["serve_alone"][0] += w.generated
            classes["serve_alone"][1] += w.interval_s
        elif k == {"train"}:
            classes["train_alone"][0] += w.train
            classes["train_alone"][1] += w.interval_s
        elif k == {"serve", "train"}:
            classes["together_serve"][0] += w.generated
            classes["together_train"][0] += w.train
            together_s += w.interval_s
    classes["together_serve"][1] = classes["together_train"][1] = together_s

    def rate(name: str) -> float | None:
        tokens, seconds = classes[name]
        return tokens / seconds if seconds >= MIN_SECONDS else None

    result: dict[str, Any] = {
        "machine": machine.name,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "policy": machine.policy,
        "serve_alone_tokens_per_s": rate("serve_alone"),
        "train_alone_tokens_per_s": rate("train_alone"),
        "serve_together_tokens_per_s": rate("together_serve"),
        "train_together_tokens_per_s": rate("together_train"),
        "seconds": {
            "serve_alone": classes["serve_alone"][1],
            "train_alone": classes["train_alone"][1],
            "together": together_s,
        },
        "runs": _runs(spans, ws, kinds),
        "min_seconds": MIN_SECONDS,
    }
    result.update(verdict(result, machine.name))
    return result


def verdict(r: dict[str, Any], name: str) -> dict[str, Any]:
    """The combined throughput and a sentence; or what to run to get the missing data."""
    sa, ta = r["serve_alone_tokens_per_s"], r["train_alone_tokens_per_s"]
    st, tt = r["serve_together_tokens_per_s"], r["train_together_tokens_per_s"]
    todo = []
    if sa is None:
        todo.append(f"a serving job alone on {name} for 10 minutes: {RUN_HINT['serve']}")
    if ta is None:
        todo.append(f"a training job alone on {name} for 10 minutes: {RUN_HINT['train']}")
    if st is None:
        todo.append(f"both together on {name} for 10 minutes (submit the two jobs at once, targeted at {name})")
    if todo or not sa or not ta:
        return {
            "combined_machines": None,
            "serve_loss_percent": None,
            "train_gain_machines": None,
            "decision": None,
            "verdict": "Not enough data yet. Run " + "; ".join(todo) + "."
            if todo
            else "Not enough data yet: a kind produced no tokens when alone.",
            "to_run": todo,
        }
    serve_share = st / sa
    train_share = tt / ta
    combined = serve_share + train_share
    loss = (1 - serve_share) * 100
    cost = f"sharing costs serving {loss:.0f}%" if loss >= 0.5 else "sharing costs serving nothing measurable"
    decision = "share" if combined > 1 else "split"
    sentence = (
        f"{cost} and gives training {train_share:.1f} of a machine for free: together they do "
        f"{combined:.2f} machines' worth of work, so {decision}."
    )
    return {
        "combined_machines": combined,
        "serve_loss_percent": loss,
        "train_gain_machines": train_share,
        "decision": decision,
        "verdict": sentence[0].upper() + sentence[1:],
        "to_run": [],
    }


def _runs(spans, ws, kinds) -> list[dict[str, Any]]:
    """The job attempts the figures rest on, each with the classes of the windows it ran in."""
    by_job: dict[int, set[str]] = {}
    for seq, w in ws.items():
        k = kinds.get(seq, set())
        label = "together" if len(k) == 2 else (f"{next(iter(k))} alone" if k else None)
        if label:
            for job_id in w.jobs:
                by_job.setdefault(job_id, set()).add(label)
    out = []
    for a in spans:
        if a.job_id in by_job:
            # Which model each side ran: a share verdict holds for those sizes, not for every model.
            model = job_model(a.job)
            out.append(
                {
                    "job_id": a.job_id,
                    "name": a.job.name,
                    "kind": a.job.kind,
                    "attempt": a.number,
                    "started_at": a.started_at.isoformat(),
                    "ended_at": a.ended_at.isoformat() if a.ended_at else None,
                    "classes": sorted(by_job[a.job_id]),
                    "params_b": model.params_b,
                    "params_source": model.params_source if model.params_b else None,
                }
            )
    return out
