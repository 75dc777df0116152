"""The planner page, its CSV exports and the backfill switch. Figures come from planner.plan_for and
backfill.gaps, the same functions the API calls."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from pydantic import ValidationError

from dashboard.accounts.models import is_operator
from dashboard.core.csvfile import csv_response
from dashboard.fleet import visibility
from dashboard.jobs import service

from . import backfill, planner
from .models import ValueRates

SERVE_ROWS = 3  # model rows in the form; the API takes up to 20
SERVE_FIELDS = ("name", "params_b", "precision", "context_tokens", "tokens_per_day", "peak_concurrent")
TRAIN_FIELDS = ("name", "params_b", "method", "tokens_per_day")
MONEY_FIELDS = (
    "electricity_price_per_kwh",
    "pue",
    "amortisation_months",
    "serve_value_per_million",
    "train_value_per_million",
    "storage_class",
)
# What an empty form plans: a 70B model at 4 bits for a busy product.
EXAMPLE = {
    "s0_name": "Llama 3.1 70B",
    "s0_params_b": "70.6",
    "s0_precision": "int4",
    "s0_context_tokens": "8192",
    "s0_tokens_per_day": "100000000",
    "s0_peak_concurrent": "32",
}


def _global_rates() -> dict[str, str]:
    """The admin's global value rates as form defaults, when they are in the plan's currency."""
    rates = ValueRates.objects.filter(machine=None, currency=planner.PLAN_CURRENCY).first()
    out = {}
    if rates and rates.serve_per_million_generated is not None:
        out["serve_value_per_million"] = str(rates.serve_per_million_generated)
    if rates and rates.train_per_million_tokens is not None:
        out["train_value_per_million"] = str(rates.train_per_million_tokens)
    return out


def parse_prices(text: str) -> tuple[dict[str, float], list[str]]:
    """'NVIDIA H100 SXM (80GB HBM3) = 30000' lines: the price of one device by catalogue name."""
    prices, errors = {}, []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.rpartition("=")
        try:
            prices[name.strip()] = float(value)
            if not sep or not name.strip() or prices[name.strip()] < 0:
                raise ValueError
        except ValueError:
            prices.pop(name.strip(), None)
            errors.append(f"prices: {line.strip()!r} is not 'catalogue name = price'")
    return prices, errors


def workload_from_query(query: dict[str, str]) -> tuple[planner.Workload | None, dict[str, Any], list[str]]:
    """The form's fields as a Workload; the fields as given (to fill the form again); errors as sentences."""
    fields = {**EXAMPLE, **_global_rates()} if not any(k.startswith(("s0_", "t0_")) for k in query) else {}
    fields.update({k: v for k, v in query.items() if k != "format" and k != "table"})
    data: dict[str, Any] = {"serve": [], "train": []}
    for i in range(SERVE_ROWS):
        row = {k: fields.get(f"s{i}_{k}", "").strip() for k in SERVE_FIELDS}
        if row["params_b"]:
            data["serve"].append({k: v for k, v in row.items() if v != ""})
    row = {k: fields.get(f"t0_{k}", "").strip() for k in TRAIN_FIELDS}
    if row["params_b"]:
        data["train"].append({k: v for k, v in row.items() if v != ""})
    for k in MONEY_FIELDS:
        if fields.get(k, "").strip():
            data[k] = fields[k].strip()
    data["device_prices"], errors = parse_prices(fields.get("prices", ""))
    try:
        return planner.Workload.model_validate(data), fields, errors
    except ValidationError as exc:
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            errors.append(f"{where}: {e['msg'].removeprefix('Value error, ')}" if where else e["msg"])
        return None, fields, errors


def planned_train_rates(result: dict[str, Any]) -> dict[str, float]:
    """The plan's training tokens/s of each fleet machine (its first training part), for the gaps."""
    out = {}
    for row in result["rows"]:
        if row["source"] == "fleet":
            rates = [p["tokens_per_s"] for p in row["parts"] if p["kind"] == "train" and p.get("tokens_per_s")]
            if rates:
                out[row["key"].removeprefix("fleet:")] = rates[0]
    return out


def compute(w: planner.Workload, machine_ids: Collection[int] | None = None) -> dict[str, Any]:
    """The plan and the gaps for a workload: what the page, its CSV and the API show, of the
    machines of ``machine_ids`` (None: every machine)."""
    result = planner.plan_for(w, machine_ids)
    result["gaps"] = backfill.gaps(planned_train_rates=planned_train_rates(result), machine_ids=machine_ids)
    return result


@login_required
def plan_page(request: HttpRequest) -> HttpResponse:
    w, fields, errors = workload_from_query(request.GET.dict())
    result = compute(w, visibility.visible_machine_ids(request.user)) if w is not None else None
    if request.GET.get("format") == "csv":
        if result is None:
            return HttpResponse("; ".join(errors), status=400, content_type="text/plain")
        return _plan_csv(result, request.GET.get("table", "ranking"))
    context = {
        "fields": fields,
        "errors": errors,
        "result": result,
        "serve_rows": [{k: fields.get(f"s{i}_{k}", "") for k in SERVE_FIELDS} | {"i": i} for i in range(SERVE_ROWS)],
        "train_row": {k: fields.get(f"t0_{k}", "") for k in TRAIN_FIELDS},
        "storage_classes": planner.STORAGE_CLASSES,
        "can_backfill": is_operator(request.user),
        "query": request.GET.urlencode() if request.GET else "",
        "tables": CSV_TABLES,
        "defaults": {
            "serve": planner.DEFAULT_SERVE_EFFICIENCY,
            "train": planner.DEFAULT_TRAIN_EFFICIENCY,
            "price_per_kwh": planner.DEFAULT_PRICE_PER_KWH,
        },
        "profile_chart": [
            {"label": p["label"], "util": p["util_percent"], "tokens": p["generated_tokens"]}
            for p in (result["gaps"]["profile"] if result else [])
        ],
    }
    return render(request, "economics/plan.html", context)


@login_required
@require_POST
def backfill_switch(request: HttpRequest) -> HttpResponse:
    if not is_operator(request.user):
        return HttpResponseForbidden("Only operators and admins may change the backfill policy.")
    enabled = request.POST.get("enabled") == "1"
    service.set_backfill(enabled, request.user)
    messages.success(
        request,
        "Backfill policy turned "
        + (
            "on (in the audit log): preemptible training jobs now fill the GPUs that serving machines leave free."
            if enabled
            else "off (in the audit log): running backfill jobs are preempted and requeued."
        ),
    )
    return redirect(reverse("economics:plan") + "#plan-gaps")


# ---------------------------------------------------------------------------------------------
# CSV: every table of the page, units in the headers


def _ranking(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    head = [
        "rank",
        "candidate",
        "source",
        "platform",
        "devices",
        "machines",
        "basis",
        "capex_usd",
        "cost_per_day_usd",
        "energy_kwh_per_day",
        "value_per_day_usd",
        "cost_per_million_tokens_usd",
        "roi_percent",
        "payback_days",
        "price_source",
        "problems",
    ]
    rows = [
        [
            x["rank"],
            x["label"],
            x["source"],
            x["platform"],
            x["devices"],
            x["machines"],
            x["basis"],
            x["capex"],
            x["cost_per_day"],
            x["energy_kwh_per_day"],
            x["value_per_day"],
            x["cost_per_million_tokens"],
            x["roi_percent"],
            x["payback_days"],
            x["price_source"],
            "; ".join(x["problems"]),
        ]
        for x in r["rows"]
    ]
    return head, rows


def _parts(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    head = [
        "candidate",
        "kind",
        "model",
        "size_class",
        "mode",
        "tokens_per_day",
        "needed_tokens_per_s",
        "tokens_per_s_per_machine",
        "basis",
        "detail",
        "sequences_per_machine",
        "machines",
        "busy_percent",
    ]
    rows = []
    for x in r["rows"]:
        for p in x["parts"]:
            busy = p.get("busy_fraction")
            rows.append(
                [
                    x["label"],
                    p["kind"],
                    p["model"],
                    p["size"],
                    p.get("mode"),
                    p["tokens_per_day"],
                    p["needed_tokens_per_s"],
                    p.get("tokens_per_s"),
                    p.get("basis"),
                    p.get("detail"),
                    p.get("sequences_per_machine"),
                    p.get("machines"),
                    busy * 100 if busy is not None else None,
                ]
            )
    return head, rows


def _streamed(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    head = [
        "candidate",
        "storage_read_bytes_per_s",
        "storage_source",
        "size_class",
        "mode",
        "bound_tokens_per_s",
        "streamed_bytes_per_token",
        "streamed_tokens_per_s",
    ]
    rows = [
        [
            x["label"],
            x["storage_read_bytes_per_s"],
            x["storage_source"],
            c["size"],
            c["mode"],
            c["bound_tokens_per_s"],
            c["streamed_bytes"],
            c["streamed_tokens_per_s"],
        ]
        for x in r["streamed"]
        for c in x["cells"]
    ]
    return head, rows


def _unified(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    head = [
        "candidate",
        "platform",
        "addressable_memory_bytes",
        "bandwidth_gb_s",
        "bound_tokens_per_s",
        "measured_tokens_per_s",
        "tokens_per_s",
        "basis",
        "price_usd",
        "price_per_gb_usd",
        "watts",
        "cost_per_million_tokens_usd",
    ]
    rows = [
        [
            x["label"],
            x["platform"],
            x["addressable_bytes"],
            x["bandwidth_gb_s"],
            x["bound_tokens_per_s"],
            x["measured_tokens_per_s"],
            x["tokens_per_s"],
            x["basis"],
            x["price"],
            x["price_per_gb"],
            x["watts"],
            x["cost_per_million_tokens"],
        ]
        for x in r["unified"]
    ]
    return head, rows


def _efficiency(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    head = ["kind", "size_class", "platform", "efficiency_percent", "basis", "detail"]
    rows = [
        [e["kind"], e["size"], e["platform"], e["efficiency"] * 100, e["basis"], e["detail"]] for e in r["efficiencies"]
    ]
    return head, rows


def _gaps(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    head = [
        "machine",
        "gpus",
        "observed_hours_of_week",
        "idle_gpu_hours_per_week",
        "train_tokens_per_s_per_gpu",
        "train_rate_source",
        "backfill_tokens_per_week",
        "roi_percent",
        "roi_with_backfill_percent",
        "roi_uplift_points",
    ]
    rows = [[x[h] for h in head] for x in r["gaps"]["machines"]]
    return head, rows


def _profile(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    head = ["hour_of_week_utc", "label", "util_percent", "generated_tokens_per_week"]
    rows = [[p["hour_of_week"], p["label"], p["util_percent"], p["generated_tokens"]] for p in r["gaps"]["profile"]]
    return head, rows


CSV_TABLES = {
    "ranking": _ranking,
    "parts": _parts,
    "streamed": _streamed,
    "unified": _unified,
    "efficiency": _efficiency,
    "gaps": _gaps,
    "profile": _profile,
}


def _plan_csv(result: dict[str, Any], table: str) -> HttpResponse:
    if table not in CSV_TABLES:
        return HttpResponse(f"table: expected one of {', '.join(CSV_TABLES)}", status=400, content_type="text/plain")
    head, rows = CSV_TABLES[table](result)
    return csv_response(itertools.chain([head], rows), f"plan-{table}.csv")
