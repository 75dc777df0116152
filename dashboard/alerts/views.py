"""The alerts page (open and recent incidents, the rules) and the rule form, which only admins use."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from .forms import AlertRuleForm
from .models import Alert, AlertRule, WebhookDelivery

RECENT = 50


def _alerts():
    deliveries = Prefetch("deliveries", queryset=WebhookDelivery.objects.order_by("created_at", "pk"))
    return Alert.objects.select_related("rule", "machine", "job").prefetch_related(deliveries)


@login_required
def alert_list(request: HttpRequest) -> HttpResponse:
    context = {
        "open": _alerts().filter(resolved_at=None)[:200],
        "recent": _alerts().exclude(resolved_at=None).order_by("-resolved_at", "-pk")[:RECENT],
        "rules": AlertRule.objects.select_related("machine", "created_by"),
        "can_edit": request.user.is_staff,
    }
    return render(request, "alerts/list.html", context)


@login_required
def rule_edit(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    if not request.user.is_staff:
        return render(request, "alerts/forbidden.html", status=403)
    rule = get_object_or_404(AlertRule, pk=pk) if pk is not None else None
    form = AlertRuleForm(request.POST or None, instance=rule, initial=None if rule else {"threshold": 10})
    if request.method == "POST" and form.is_valid():
        saved = form.save(commit=False)
        if rule is None:
            saved.created_by = request.user
        saved.save()
        messages.success(request, f"Rule “{saved.name}” {'saved' if rule else 'created'}.")
        return redirect("alerts:list")
    return render(request, "alerts/rule_form.html", {"form": form, "rule": rule})
