"""The rule form: one threshold field whose unit depends on the kind, checked against that kind."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.validators import URLValidator

from .models import AlertRule

MAX_MINUTES = 7 * 24 * 60


def _threshold_help() -> str:
    lines = [
        f"{label}: {AlertRule.THRESHOLD_MEANING[kind][0]}, {AlertRule.THRESHOLD_MEANING[kind][1]}."
        for kind, label in AlertRule.Kind.choices
    ]
    return " ".join(lines)


class AlertRuleForm(forms.ModelForm):
    webhook_url = forms.URLField(
        required=False,
        max_length=500,
        label="Webhook URL",
        validators=[URLValidator(schemes=["http", "https"])],
        assume_scheme="https",
        help_text="Gets a JSON POST when an alert fires and when it resolves (retried on failure); empty for none.",
        widget=forms.URLInput(attrs={"class": "mono", "placeholder": "https://hooks.example.com/…"}),
    )

    class Meta:
        model = AlertRule
        fields = [
            "name",
            "kind",
            "threshold",
            "machine",
            "webhook_url",
            "enabled",
            "level",
            "action",
            "allowed_processes",
        ]
        help_texts = {"threshold": _threshold_help()}
        labels = {"enabled": "Enabled (a disabled rule resolves its open alerts)"}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["machine"].empty_label = "Every machine"
        self.fields["machine"].required = False

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        kind, threshold = data.get("kind"), data.get("threshold")
        if kind is None or threshold is None:
            return data
        if kind == AlertRule.Kind.GPU_TEMPERATURE:
            if not 20 <= threshold <= 120:
                self.add_error("threshold", "a GPU temperature limit is in °C, between 20 and 120")
        elif kind in (AlertRule.Kind.GPU_ECC_UNCORRECTABLE, AlertRule.Kind.GPU_MEMORY_REMAP):
            if not 0 <= threshold <= 1_000_000:
                self.add_error("threshold", "a count: 0 or more")
        elif kind == AlertRule.Kind.JOB_FAILED:
            if not 0 <= threshold <= MAX_MINUTES:
                self.add_error("threshold", f"minutes the alert stays open: 0 to {MAX_MINUTES} (a week)")
        elif not 0 < threshold <= MAX_MINUTES:
            self.add_error("threshold", f"in minutes: more than 0, at most {MAX_MINUTES} (a week)")
        level = data.get("level")
        if kind == AlertRule.Kind.JOB_ALLOCATED_IDLE and level is not None and not 0 < level <= 100:
            self.add_error("level", "an SM activity in %: more than 0, at most 100")
        return data
