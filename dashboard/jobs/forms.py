"""The submit form. Its rules are the API's (``JobIn``): the form parses text, ``JobIn`` judges it."""

from __future__ import annotations

import json
import shlex
from typing import Any

from django import forms
from pydantic import ValidationError

from dashboard.fleet.models import Machine
from dashboard.fleet.queries import accelerator_summary

from . import allowlist
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
        help_text="Send the line as a shell string (pipes, &&, $VARS). Hosts refuse this unless their worker config allows it.",
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

    job_fields: dict[str, Any]  # set by clean(): what service.submit takes

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        machines = list(Machine.objects.prefetch_related("accelerators").order_by("name"))
        widget = self.fields["machine"].widget
        widget.choices = [("", "Automatic placement")] + [(m.name, machine_label(m)) for m in machines]
        widget.policies = {"": allowlist.automatic_policy(machines)} | {
            m.name: allowlist.machine_policy(m) for m in machines
        }

    def picker(self) -> allowlist.MachinePolicy | None:
        """The templates of the machine now chosen (the page shows them before any script runs)."""
        return self.fields["machine"].widget.policies.get(str(self["machine"].value() or ""))

    def clean_env(self) -> dict[str, str]:
        return parse_env(self.cleaned_data["env"])

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data  # some text did not even parse: JobIn would only repeat it
        line = data["command"]
        if data["shell"]:
            command: list[str] | str = line
        else:
            try:
                command = shlex.split(line)
            except ValueError as exc:  # an unclosed quote
                self.add_error("command", f"cannot split it into arguments: {exc}")
                return data
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
        fields["precision"] = data["precision"] or None
        try:
            job = JobIn(command=command, machine=data["machine"] or None, **fields)
        except ValidationError as exc:
            for field, message in _messages(exc, isinstance(command, list)):
                self.add_error(field if field in self.fields else None, message)
            return data
        target = None
        if job.machine:
            target = Machine.objects.filter(name=job.machine).first()
            if target is None:
                self.add_error("machine", f"no machine named {job.machine!r}")
                return data
        if target is not None:
            reason = allowlist.refusal(
                target,
                command if isinstance(command, list) else None,
                command if isinstance(command, str) else "",
                job.workdir or None,
            )
            if reason:
                self.add_error("command", reason)
                return data
        # The same fields the API hands to service.submit.
        self.job_fields = job.model_dump(exclude={"command", "machine"}) | {
            "argv": command if isinstance(command, list) else None,
            "shell": command if isinstance(command, str) else "",
            "target": target,
        }
        return data


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
        yield str(field), where + err["msg"]
