"""The team page's forms: a team admin edits the quotas and report settings, and the members."""

from __future__ import annotations

from django import forms

from .models import Membership, Team


class TeamSettingsForm(forms.ModelForm):
    class Meta:
        model = Team
        fields = [
            "share",
            "gpu_quota",
            "gpu_hours_quota",
            "quota_period",
            "report_emails",
            "report_webhook",
            "time_zone",
        ]
        labels = {"gpu_quota": "GPUs at once", "gpu_hours_quota": "GPU-hours per period", "time_zone": "Report zone"}
        help_texts = {
            "share": "Weight against the other teams in the fair-share order.",
            "gpu_quota": "Empty: no limit.",
            "gpu_hours_quota": "Empty: no limit.",
            "report_emails": "Weekly report by e-mail, comma-separated.",
            "report_webhook": "Weekly report as a JSON POST.",
            "time_zone": "IANA zone of the report's Monday-to-Monday week; empty: the server's.",
        }


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Membership.Role.choices)
