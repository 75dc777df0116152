"""Team pages: each team's members, roles, quotas and current usage (teams' rules, jobs' usage).

Members see their team's page; team admins (and staff) also edit its quotas, report settings and
members there, each change through ``dashboard.teams.service`` and so in the audit log.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.utils import timezone

from dashboard.jobs import teamusage
from dashboard.teams import access, quota, service
from dashboard.teams.forms import MemberForm, TeamSettingsForm
from dashboard.teams.models import Membership, Team


def _usage(teams: list[Team]) -> dict[int, dict]:
    now = timezone.now()
    usage = teamusage.quota_usage(teams, now)
    return {
        t.pk: {
            "gpus": usage[t.pk].gpus,
            "gpu_hours": usage[t.pk].gpu_seconds / 3600 if t.gpu_hours_quota is not None else None,
            "period_start": quota.period_start(t, now),
        }
        for t in teams
    }


@login_required
def team_list(request: HttpRequest) -> HttpResponse:
    ids = access.visible_team_ids(request.user)
    teams = list(Team.objects.all() if ids is None else Team.objects.filter(pk__in=ids))
    usage = _usage(teams)
    roles = access.team_roles(request.user)
    rows = [{"team": t, "usage": usage[t.pk], "role": roles.get(t.pk)} for t in teams]
    return render(request, "teams/list.html", {"rows": rows})


@login_required
def team_page(request: HttpRequest, slug: str) -> HttpResponse:
    team = get_object_or_404(Team, slug=slug)
    if not access.can_see(request.user, team.pk):
        raise Http404("no such team")
    admin = access.is_team_admin(request.user, team.pk)
    settings_form = TeamSettingsForm(instance=team, prefix="team")
    member_form = MemberForm(prefix="member")
    if request.method == "POST":
        if not admin:
            return HttpResponse("Only the team's admins change it.", status=403, content_type="text/plain")
        action = request.POST.get("action")
        if action == "settings":
            settings_form = TeamSettingsForm(request.POST, instance=Team.objects.get(pk=team.pk), prefix="team")
            if settings_form.is_valid():
                changes = {f: settings_form.cleaned_data[f] for f in settings_form.changed_data}
                service.update_team(request.user, Team.objects.get(pk=team.pk), **changes)
                messages.success(request, "Team saved.")
                return redirect("teams:team", slug=team.slug)
        elif action == "member":
            member_form = MemberForm(request.POST, prefix="member")
            if member_form.is_valid():
                user = get_user_model().objects.filter(username=member_form.cleaned_data["username"]).first()
                if user is None:
                    member_form.add_error("username", "No user has that name.")
                else:
                    service.set_role(request.user, team, user, member_form.cleaned_data["role"])
                    messages.success(request, f"{user.get_username()} is {member_form.cleaned_data['role']}.")
                    return redirect("teams:team", slug=team.slug)
        elif action == "remove":
            membership = get_object_or_404(Membership, team=team, pk=request.POST.get("membership"))
            service.remove_member(request.user, membership)
            messages.success(request, f"{membership.user.get_username()} left {team.name}.")
            return redirect("teams:team", slug=team.slug)
    context = {
        "team": team,
        "admin": admin,
        "members": Membership.objects.filter(team=team).select_related("user").order_by("user__username"),
        "usage": _usage([team])[team.pk],
        "settings_form": settings_form,
        "member_form": member_form,
        "roles": Membership.Role.choices,
    }
    return render(request, "teams/team.html", context, status=400 if request.method == "POST" else 200)


app_name = "teams"
urlpatterns = [
    path("", team_list, name="list"),
    path("<slug:slug>/", team_page, name="team"),
]
