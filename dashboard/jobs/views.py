"""HTML pages for jobs: the list, one job with its live log, the submit form, cancel."""

from __future__ import annotations

import itertools

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from dashboard.accounts.auth import token_or_session
from dashboard.core.csvfile import csv_response
from dashboard.fleet import visibility
from dashboard.fleet.models import Machine
from dashboard.teams import access as team_access

from . import export, queries, service, throughput
from .forms import JobForm, template_initial
from .models import Job
from .tasks import PROGRESS_PRESETS

FILTERS = ("status", "machine", "kind", "owner")


def _listed(request: HttpRequest) -> tuple[dict[str, str], QuerySet[Job]]:
    """The list's filters as chosen ("" for any) and the jobs they select that the user may see."""
    chosen = {f: request.GET.get(f) or "" for f in FILTERS}
    return chosen, team_access.scope_jobs(queries.job_list(**{f: v or None for f, v in chosen.items()}), request.user)


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    chosen, visible = _listed(request)
    jobs = list(visible[:200])
    summaries = throughput.job_summaries([job.pk for job in jobs])
    for job in jobs:
        job.throughput_summary = summaries.get(job.pk)  # read by the main_throughput filter
    context = {
        "jobs": jobs,
        "chosen": chosen,
        "statuses": Job.Status.choices,
        "kinds": Job.Kind.choices,
        "machines": _job_machines(request.user),
        "owners": get_user_model()
        .objects.filter(jobs__isnull=False)
        .distinct()
        .order_by("username")
        .values_list("username", flat=True),
        "can_submit": team_access.can_submit(request.user),
    }
    return render(request, "jobs/_jobs.html" if request.GET.get("partial") else "jobs/list.html", context)


@token_or_session(login_page=True)
def job_list_csv(request: HttpRequest) -> HttpResponse:
    """Every job the list's filters select (the newest ``export.MAX_ROWS``), as CSV (jobs/export.py)."""
    _, visible = _listed(request)
    jobs = list(visible.prefetch_related("attempts")[: export.MAX_ROWS + 1])
    more = len(jobs) > export.MAX_ROWS
    jobs = jobs[: export.MAX_ROWS]
    summaries = throughput.job_summaries([job.pk for job in jobs])
    rows = export.job_rows(jobs, summaries, timezone.now())
    if more:
        note = f"only the newest {export.MAX_ROWS} jobs; filter by status, kind, machine or owner for the rest"
        rows = itertools.chain(rows, [[note]])
    return csv_response(rows, f"jobs-{timezone.localdate():%Y-%m-%d}.csv")


def _job_machines(user):
    """Names for the machine filter: machines that ran jobs of the user's teams (staff: any job)."""
    teams = team_access.visible_team_ids(user)
    ran = (
        Machine.objects.filter(jobs__isnull=False) if teams is None else Machine.objects.filter(jobs__team_id__in=teams)
    )
    return ran.distinct().values_list("name", flat=True)


@login_required
def job_page(request: HttpRequest, pk: int) -> HttpResponse:
    visible = team_access.scope_jobs(Job.objects.select_related("owner", "machine", "target", "team"), request.user)
    job = get_object_or_404(visible, pk=pk)
    context = {
        "job": job,
        "attempts": job.attempts.select_related("machine"),
        "can_cancel": service.can_cancel(request.user, job) and not job.is_finished,
        "live": {"logUrl": reverse("api:job_log", kwargs={"job_id": job.pk}), "stateUrl": f"{request.path}?partial=1"},
        "gpu_processes": queries.job_gpu_processes(job),
    }
    partial = request.GET.get("partial")
    if not partial:  # the state refresh does not show it; static/js/throughput.js refreshes it
        context["throughput"] = throughput.job_summary(job)
    return render(request, "jobs/_job_state.html" if partial else "jobs/job.html", context)


@login_required
def job_new(request: HttpRequest) -> HttpResponse:
    if not team_access.can_submit(request.user):
        return render(request, "jobs/forbidden.html", status=403)
    teams = team_access.submit_teams(request.user)
    visible = visibility.visible_machine_ids(request.user)
    if request.method == "POST":
        form = JobForm(request.POST, teams=teams, machine_ids=visible)
        if form.is_valid():
            try:
                # A user who submits for several teams picks one (POST "team", a slug).
                team = team_access.team_for_submit(request.user, request.POST.get("team") or None)
                job = service.submit(request.user, {**form.job_fields, "team": team})
            except service.JobError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Job #{job.pk} submitted.")
                return redirect("jobs:job", pk=job.pk)
    else:
        initial = template_initial(request.GET.get("template", ""), request.GET.get("machine") or None, visible)
        form = JobForm(initial=initial, teams=teams, machine_ids=visible)
    return render(request, "jobs/new.html", {"form": form, "progress_presets": PROGRESS_PRESETS})


@login_required
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(team_access.scope_jobs(Job.objects.all(), request.user), pk=pk)
    if not service.can_cancel(request.user, job):
        return render(request, "jobs/forbidden.html", {"action": "cancel this job"}, status=403)
    try:
        job = service.cancel(request.user, job)
    except service.JobError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, "Job cancelled." if job.is_finished else "Cancel requested: the worker is stopping the job."
        )
    return redirect("jobs:job", pk=job.pk)
