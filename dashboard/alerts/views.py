"""The alerts page (open and recent incidents, the rules) and the rule form, which only admins use."""

from __future__ import annotations

from collections.abc import Collection

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dashboard.fleet import visibility
from dashboard.jobs.service import audit, can_cancel

from . import ghosts
from .context import visible_alerts
from .forms import AlertRuleForm
from .models import Alert, AlertRule, CleanupRequest, GhostProcess, WebhookDelivery

RECENT = 50


def _alerts(user):
    deliveries = Prefetch("deliveries", queryset=WebhookDelivery.objects.order_by("created_at", "pk"))
    return visible_alerts(user, Alert.objects.select_related("rule", "machine", "job").prefetch_related(deliveries))


@login_required
def alert_list(request: HttpRequest) -> HttpResponse:
    # Only what concerns machines the user's teams see (and the shared pool): each row names its machine.
    visible = visibility.visible_machine_ids(request.user)
    rules = AlertRule.objects.select_related("machine", "created_by")
    if visible is not None:
        rules = rules.filter(Q(machine__isnull=True) | Q(machine_id__in=visible))
    cleanups = visibility.only(CleanupRequest.objects.select_related("machine", "job", "confirmed_by"), visible)
    context = {
        "open": _alerts(request.user).filter(resolved_at=None)[:200],
        "recent": _alerts(request.user).exclude(resolved_at=None).order_by("-resolved_at", "-pk")[:RECENT],
        "rules": rules,
        "can_edit": request.user.is_staff,
        "ghosts": _ghosts(request.user, visible),
        "cleanups": cleanups[:20],
    }
    return render(request, "alerts/list.html", context)


def _ghosts(user, machine_ids: Collection[int] | None = None) -> list[GhostProcess]:
    """Processes holding GPU memory outside running jobs on the machines of ``machine_ids`` (None:
    all), each marked whether ``user`` may confirm its cleanup."""
    found = visibility.only(GhostProcess.objects.select_related("machine", "job"), machine_ids)
    rows = list(found.order_by("machine__name", "pid"))
    waiting = set(
        CleanupRequest.objects.filter(status=CleanupRequest.Status.CONFIRMED).values_list("machine_id", "pgid")
    )
    for g in rows:
        g.cleanup_waiting = (g.machine_id, g.pgid) in waiting
        g.can_clean = (
            g.reason == GhostProcess.Reason.ORPHANED
            and g.job is not None
            and not g.cleanup_waiting
            and can_cancel(user, g.job)
        )
    return rows


@login_required
@require_POST
def confirm_cleanup(request: HttpRequest, machine: str, pgid: int) -> HttpResponse:
    found = visibility.machine_or_404(request.user, machine)
    try:
        done = ghosts.confirm_cleanup(request.user, found, pgid)
    except ghosts.CleanupError as exc:
        messages.error(request, str(exc))
        return redirect("alerts:list")
    messages.success(
        request,
        f"Cleanup of process group {done.pgid} on {found.name} confirmed: its worker stops it at its next poll.",
    )
    return redirect("alerts:list")


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
        audit(
            request.user,
            "alert_rule.create" if rule is None else "alert_rule.edit",
            rule=saved.pk,
            name=saved.name,
            kind=saved.kind,
            threshold=saved.threshold,
            enabled=saved.enabled,
            level=saved.level,
            rule_action=saved.action,
        )
        messages.success(request, f"Rule “{saved.name}” {'saved' if rule else 'created'}.")
        return redirect("alerts:list")
    return render(request, "alerts/rule_form.html", {"form": form, "rule": rule})
