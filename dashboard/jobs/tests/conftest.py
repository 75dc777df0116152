"""Teams (dashboard/teams/): two teams and their people: an owner (operator in A), a teammate (viewer in A), a stranger
(operator in B); machines owned by each team and one in the shared pool."""

from __future__ import annotations

import pytest

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.teams import service
from dashboard.teams.models import Team


@pytest.fixture
def team_a(db) -> Team:
    return service.create_team(None, "team-a", "Team A")


@pytest.fixture
def team_b(db) -> Team:
    return service.create_team(None, "team-b", "Team B")


def member(django_user_model, username: str, team: Team, role: str):
    user = django_user_model.objects.create_user(username, password=f"{username}-pass")
    service.set_role(None, team, user, role)
    return user


@pytest.fixture
def owner(django_user_model, team_a):
    return member(django_user_model, "alice", team_a, "operator")


@pytest.fixture
def teammate(django_user_model, team_a):
    return member(django_user_model, "amy", team_a, "viewer")


@pytest.fixture
def stranger(django_user_model, team_b):
    return member(django_user_model, "bob", team_b, "operator")


def online(name: str, team: Team | None = None, gpus: int = 1, used: float = 40e9) -> Machine:
    """A machine that just reported ``gpus`` GPUs with about 42 GiB free each (make_batch)."""
    m = Machine.objects.create(name=name, team=team)
    batch = make_batch([1], gpus=gpus)
    for g in batch["samples"][0]["gpus"]:
        g["mem_used_bytes"] = {"min": used, "mean": used, "max": used}
    store_batch(m, Batch.model_validate(batch))
    m.refresh_from_db()
    return m
