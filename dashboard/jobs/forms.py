"""The submit form. Its rules are the API's (``JobIn``): the form parses text, ``JobIn`` judges it."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Collection
from typing import Any

from django import forms
from pydantic import ValidationError

from dashboard.fleet.models import Machine
from dashboard.fleet.queries import accelerator_summary
from dashboard.fleet.visibility import only

from . import allowlist, feasibility
from .api import JobIn
from .models import Job
from .tasks import PROGRESS_PRESETS

GIB = 2**30

# Prefills for ?template=train|serve: the built-in workloads every host allows.
TEMPLATES: dict[str, dict[str, Any]] = {
    "train": {
        "name": "train-demo",
        "kind": "train",
        "command": "python -m hwprobe.workloads train --seconds 60",
        "gpus": 1,
        "gpu_memory_gb": 4,
        "preemptible": True,
    },
    "serve": {
        "name": "serve-demo",
        "kind": "serve",
        "command": "python -m hwprobe.workloads serve --port 8100 --load 2 --seconds 60",
        "gpus": 1,
        "gpu_memory_gb": 4,
    },
}


def template_initial(
    name: str, machine: str | None = None, machine_ids: Collection[int] | None = None
) -> dict[str, Any]:
    """A template's prefill, sized to the fleet: no GPU where no machine (or the chosen one) has one."""
    initial = dict(TEMPLATES.get(name, {}))
    if initial and feasibility.refusal(initial["gpus"], initial["gpu_memory_gb"], machine, machine_ids):
        initial.update(gpus=0, gpu_memory_gb=0)
    if initial and machine:
        initial["machine"] = machine
    return initial


def machine_label(machine: Machine) -> str:
    """'gpu-01 — 2 × H100 80GB HBM3 · free 42 / 80 GiB, 38 / 80 GiB', or '… — offline'."""
    accelerators = list(machine.accelerators.all())
    parts = [accelerator_summary(accelerators) or "no GPUs"]
    if not machine.is_online():
        parts.append("offline")
    else:
        free = []
        for g in (machine.latest or {}).get("gpus") or []:
            total, used = g.get("mem_total_bytes"), g.get("mem_used_bytes")
            if total and used is not None:
                free.append(f"{max(0, total - used) / GIB:.0f} / {total / GIB:.0f} GiB")
        if free:
            parts.append("free " + ", ".join(free))
    return f"{machine.name} — " + " · ".join(parts)


class MachineSelect(forms.Select):
    """The machine select; each option carries what that machine's worker allows (``data-policy``, JSON)."""

    policies: dict[str, allowlist.MachinePolicy]

    def create_option(
        self,
        name: str,
        value: Any,
        label: Any,
        selected: Any,
        index: int,
        subindex: int | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        policy = getattr(self, "policies", {}).get(str(value))
        if policy is not None:
            option["attrs"]["data-policy"] = json.dumps(policy)
        gpus = getattr(self, "gpus", {}).get(str(value))
        if gpus is not None:  # a template clicked for this machine asks for no GPU where it has none
            option["attrs"]["data-gpus"] = str(gpus)
        return option


def parse_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and lines starting with # are skipped."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise forms.ValidationError(f"line {number}: write KEY=VALUE (got {line!r})")
        env[key.strip()] = value
    return env


class JobForm(forms.Form):
    name = forms.CharField(max_length=200)
    kind = forms.ChoiceField(choices=[("train", "Training"), ("serve", "Serving")], initial="train")
    command = forms.CharField(
        widget=forms.TextInput(attrs={"class": "mono", "spellcheck": "false", "autocomplete": "off"}),
        help_text="One line, split into arguments as a POSIX shell would (quotes work); no shell runs it. "
        "The machine's worker decides whether it runs, when the job arrives: this form only warns "
        "from what the worker last reported, and a host may change its policy after that.",
    )
    shell = forms.BooleanField(
        required=False,
        label="Run through the shell",
        help_text="Send the line as a shell string (pipes, &&, $VARS). "
        "Hosts refuse this unless their worker config allows it.",
    )
    workdir = forms.CharField(
        required=False,
        label="Working folder",
        widget=forms.TextInput(attrs={"class": "mono"}),
        help_text="On the machine; empty means the worker's own folder.",
    )
    env = forms.CharField(
        required=False,
        label="Environment",
        widget=forms.Textarea(
            attrs={"rows": 3, "class": "mono", "spellcheck": "false", "placeholder": "HF_HOME=/data/hf"}
        ),
        help_text="KEY=VALUE, one per line.",
    )
    secret_env = forms.CharField(
        required=False,
        label="Secret variables",
        widget=forms.TextInput(attrs={"class": "mono", "spellcheck": "false", "placeholder": "WANDB_ENTITY"}),
        help_text="Names from the environment whose values only you and admins may see, separated by spaces. "
        "Names containing TOKEN, KEY, PASSWORD or SECRET are hidden anyway.",
    )
    gpus = forms.IntegerField(initial=1, label="GPUs")
    gpu_memory_gb = forms.FloatField(initial=0, label="GPU memory per GPU (GiB)")
    machine = forms.CharField(required=False, widget=MachineSelect())
    priority = forms.IntegerField(
        initial=0, help_text="Higher runs first; a serving job may preempt lower-priority training."
    )
    max_runtime_s = forms.IntegerField(required=False, label="Maximum run time (s)", help_text="Empty for no limit.")
    preemptible = forms.BooleanField(
        required=False,
        label="Preemptible",
        help_text="Training only: may be stopped for a serving job and resumed later.",
    )
    metrics_url = forms.CharField(
        required=False,
        label="Metrics URL",
        max_length=500,
        widget=forms.TextInput(attrs={"class": "mono", "placeholder": "http://127.0.0.1:8000/metrics"}),
        help_text="A serving engine's Prometheus endpoint (vLLM, llama.cpp, TGI, SGLang), scraped on the machine "
        "while the job runs. The built-in serve workload needs none.",
    )
    progress_pattern = forms.CharField(
        required=False,
        label="Progress pattern",
        max_length=500,
        widget=forms.TextInput(
            attrs={"class": "mono", "list": "progress-presets", "spellcheck": "false", "placeholder": "hwprobe"}
        ),
        help_text="How to read tokens from the job's output: a preset (" + ", ".join(PROGRESS_PRESETS) + ") or a "
        "regular expression with a running total in (?P<tokens>...). Empty: the built-in workloads' line.",
    )
    # The "Model" fieldset: all optional, for the economics pages.
    model_params_b = forms.FloatField(
        required=False,
        label="Parameters (billions)",
        widget=forms.NumberInput(attrs={"step": "any", "placeholder": "8"}),
        help_text="8 for an 8 B model. Empty: read from the name or command (“llama-8b”), if it says.",
    )
    precision = forms.ChoiceField(
        required=False,
        choices=[("", "Unknown")] + Job.Precision.choices,
        label="Precision",
        help_text="Of the weights as served or trained.",
    )
    context_tokens = forms.IntegerField(
        required=False, label="Context length (tokens)", widget=forms.NumberInput(attrs={"placeholder": "8192"})
    )

    team = forms.ChoiceField(help_text="The team the job runs for: its quota, fair share and chargeback.")

    job_fields: dict[str, Any]  # set by clean(): what service.submit takes

    def __init__(
        self, *args: Any, teams: list[Any] | None = None, machine_ids: Collection[int] | None = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        # The machines the user may see (None: all): the only ones the form offers, names or takes.
        self.machine_ids = machine_ids
        # Only a user who may submit for several teams picks one; otherwise their one team is implied.
        if teams and len(teams) > 1:
            self.fields["team"].choices = [(t.slug, t.name) for t in teams]
        else:
            del self.fields["team"]
        machines = list(Machine.objects.prefetch_related("accelerators").order_by("name"))
        shown = machines if machine_ids is None else [m for m in machines if m.pk in machine_ids]
        widget = self.fields["machine"].widget
        widget.choices = [("", "Automatic placement")] + [(m.name, machine_label(m)) for m in shown]
        # Automatic placement may lend the job another team's idle machine: its templates are every machine's.
        widget.policies = {"": allowlist.automatic_policy(machines)} | {
            m.name: allowlist.machine_policy(m) for m in shown
        }
        counts = feasibility.gpu_counts(machine_ids)
        widget.gpus = {name: n for name, n in counts.items() if n is not None}
        if counts and None not in counts.values():
            widget.gpus[""] = max(counts.values())  # automatic placement: the best the fleet has

    def picker(self) -> allowlist.MachinePolicy | None:
        """The templates of the machine now chosen (the page shows them before any script runs)."""
        return self.fields["machine"].widget.policies.get(str(self["machine"].value() or ""))

    def clean_env(self) -> dict[str, str]:
        return parse_env(self.cleaned_data["env"])

    def clean_secret_env(self) -> list[str]:
        return [name for name in re.split(r"[\s,]+", self.cleaned_data["secret_env"]) if name]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        # Every error at once: fields that did not even parse keep their own error, and JobIn judges
        # the rest with a stand-in for those (its errors about a stand-in are not shown).
        unparsed = set(self.errors)
        data = {**STAND_INS, **{k: v for k, v in data.items() if k not in unparsed}}
        line = data["command"]
        if data["shell"]:
            command: list[str] | str = line
        else:
            try:
                command = shlex.split(line)
            except ValueError as exc:  # an unclosed quote
                self.add_error("command", f"cannot split it into arguments: {exc}")
                unparsed.add("command")
                command = ["stand-in"]
        fields = {
            k: data[k]
            for k in (
                "name",
                "kind",
                "gpus",
                "gpu_memory_gb",
                "priority",
                "max_runtime_s",
                "workdir",
                "env",
                "preemptible",
                "progress_pattern",
                "model_params_b",
                "context_tokens",
            )
        }
        fields["metrics_url"] = data["metrics_url"].strip() or None
        fields["secret_env"] = [] if "env" in unparsed else data["secret_env"]  # names checked against env
        fields["precision"] = data["precision"] or None
        try:
            job = JobIn(command=command, machine=data["machine"] or None, **fields)
        except ValidationError as exc:
            for field, message in _messages(exc, isinstance(command, list)):
                if field not in unparsed:
                    self.add_error(field if field in self.fields else None, message)
                    unparsed.add(field)
        else:
            if not unparsed:
                self._check_fleet(job, command)
        if "machine" not in unparsed:
            # With a size that did not parse, only the machine's existence is checked (0 GPUs fit anywhere).
            sized = not ({"gpus", "gpu_memory_gb"} & unparsed)
            refused = feasibility.refusal(
                data["gpus"] if sized else 0,
                data["gpu_memory_gb"] if sized else 0,
                data["machine"] or None,
                self.machine_ids,
            )
            if refused:  # no machine could ever take it: say so now rather than let it wait forever
                self.add_error(refused[0], refused[1])
        return data

    def _check_fleet(self, job: JobIn, command: list[str] | str) -> None:
        """The target's worker policy; sets ``job_fields`` when nothing stands against the job."""
        target = None
        if job.machine:
            target = only(Machine.objects.all(), self.machine_ids, "pk").filter(name=job.machine).first()
            if target is None:
                return  # feasibility.refusal names the field
        if target is not None:
            reason = allowlist.refusal(
                target,
                command if isinstance(command, list) else None,
                command if isinstance(command, str) else "",
                job.workdir or None,
            )
            if reason:
                self.add_error("command", reason)
                return
        denied = allowlist.env_refusal(target, job.env, Machine.objects.all())
        if denied:  # the host would refuse it on arrival (LD_PRELOAD, PYTHONPATH...)
            self.add_error("env", denied)
            return
        # The same fields the API hands to service.submit.
        self.job_fields = job.model_dump(exclude={"command", "machine"}) | {
            "argv": command if isinstance(command, list) else None,
            "shell": command if isinstance(command, str) else "",
            "target": target,
        }

    def placement(self) -> dict[str, Any]:
        """For the page: why no machine could take a job of the size now in the form, or where it could start now."""
        values = {}
        for name in ("gpus", "gpu_memory_gb"):
            try:
                values[name] = float(self[name].value() or 0)
            except (TypeError, ValueError):
                return {"refusal": None, "ready": []}
        gpus, memory = int(values["gpus"]), values["gpu_memory_gb"]
        machine = str(self["machine"].value() or "") or None
        visible = self.machine_ids
        refused = feasibility.refusal(gpus, memory, machine, visible) if gpus >= 0 and memory >= 0 else None
        kind = str(self["kind"].value() or "train")
        return {
            "refusal": refused[1] if refused else None,
            "ready": [] if refused else feasibility.ready_now(max(gpus, 0), max(memory, 0), kind, machine, visible),
        }


# What JobIn sees for a field that did not parse (its own error is already on the field).
STAND_INS: dict[str, Any] = {
    "name": "stand-in",
    "kind": "train",
    "command": "stand-in",
    "shell": False,
    "workdir": "",
    "env": {},
    "secret_env": [],
    "gpus": 0,
    "gpu_memory_gb": 0.0,
    "machine": "",
    "priority": 0,
    "max_runtime_s": None,
    "preemptible": False,
    "metrics_url": "",
    "progress_pattern": "",
    "model_params_b": None,
    "precision": "",
    "context_tokens": None,
}
UNITS = {"gpu_memory_gb": " GiB", "max_runtime_s": " s"}


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,g}"


def _words(field: str, err: dict[str, Any]) -> str:
    """pydantic's message in the operator's words: 'must be 0 or more', not 'Input should be ...'."""
    ctx, kind, unit = err.get("ctx") or {}, err["type"], UNITS.get(field, "")
    if kind == "greater_than_equal":
        return f"must be {_number(ctx['ge'])}{unit} or more"
    if kind == "greater_than":
        return f"must be more than {_number(ctx['gt'])}{unit}"
    if kind == "less_than_equal":
        return f"must be at most {_number(ctx['le'])}{unit}"
    if kind == "less_than":
        return f"must be less than {_number(ctx['lt'])}{unit}"
    if kind == "string_too_short":
        return "required" if ctx.get("min_length") == 1 else f"needs at least {ctx['min_length']} characters"
    if kind == "string_too_long":
        return f"at most {ctx['max_length']:,} characters"
    if kind == "too_short":
        return "required"
    if kind == "too_long":
        return f"at most {ctx['max_length']:,} items"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "string_pattern_mismatch" and field == "metrics_url":
        return "must be an http:// or https:// address without spaces"
    return str(err["msg"]).removeprefix("Value error, ")


def _messages(exc: ValidationError, command_is_list: bool):
    """(field, sentence) for each pydantic error, in words that fit next to the field."""
    for err in exc.errors():
        if not err["loc"]:  # a model validator's error names its field first: "field: sentence"
            message = err["msg"].removeprefix("Value error, ")
            field, sep, sentence = message.partition(": ")
            yield (field, sentence) if sep else ("__all__", message)
            continue
        field, *rest = err["loc"]
        if field == "command" and rest:
            branch, *rest = rest  # command is a list or a string: report the branch we sent
            if str(branch).startswith("list") != command_is_list:
                continue
        if field == "env" and rest and rest[-1] == "[key]":
            yield field, f"{rest[0]} is not a valid variable name: use letters, digits and _, not starting with a digit"
            continue
        where = f"argument {rest[0] + 1}: " if field == "command" and rest else (f"{rest[0]}: " if rest else "")
        yield str(field), where + _words(str(field), err)
