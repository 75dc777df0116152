"""Text the databases cannot store (NUL, lone surrogates) is refused wherever it comes in: a path
parameter, a query value, a form post or a JSON body. A 400 names the field; nothing reaches the
database, which on PostgreSQL used to answer with a 500."""

from __future__ import annotations

import pytest

from dashboard.accounts.models import ApiToken
from dashboard.alerts.models import AlertRule
from dashboard.core.validation import first_problem, problem


def test_the_rule_names_nul_and_lone_surrogates_and_passes_other_text():
    assert "NUL" in problem("a\x00b")
    assert "surrogate" in problem("a\ud800")
    assert problem("naïve 日本 🚀 \t\n") is None
    assert (
        first_problem({"env": {"A": ["ok", "x\x00"]}})
        == "env.A[1]: contains a NUL character (\\u0000), which cannot be stored"
    )


@pytest.mark.django_db
def test_a_nul_in_a_path_parameter_is_refused_naming_it(client, viewer):
    client.force_login(viewer)
    for url in ("/api/v1/machines/%00", "/api/v1/machines/gpu%00/series?metric=gpu.util_percent"):
        r = client.get(url)
        assert r.status_code == 400, (url, r.content)
        assert r.json()["error"].startswith("name: contains a NUL character"), r.json()


@pytest.mark.django_db
def test_a_nul_in_a_query_value_is_refused_on_pages_and_in_the_api(client, viewer):
    client.force_login(viewer)
    for url in ("/api/v1/jobs?owner=%00", "/jobs/?owner=x%00", "/reports/machines/gpu-01/?from=%00"):
        r = client.get(url)
        assert r.status_code == 400, (url, r.content)
        assert "NUL" in r.json()["error"], url
    assert client.get("/api/v1/jobs?owner=olga").status_code == 200


@pytest.mark.django_db
def test_a_nul_in_the_token_name_form_creates_no_token(client, viewer):
    client.force_login(viewer)
    r = client.post("/account/tokens/", {"name": "grafana\x00"})
    assert r.status_code == 400 and r.json()["error"].startswith("name: "), r.content
    assert ApiToken.objects.count() == 0


@pytest.mark.django_db
def test_a_nul_in_the_alert_rule_form_creates_no_rule(client, admin_user):
    client.force_login(admin_user)
    rules = AlertRule.objects.count()  # the default rules
    r = client.post("/alerts/rules/new/", {"name": "hot\x00", "kind": "gpu_temperature", "threshold": "85"})
    assert r.status_code == 400 and r.json()["error"].startswith("name: "), r.content
    assert AlertRule.objects.count() == rules


@pytest.mark.django_db
def test_a_nul_in_the_job_form_submits_nothing(client, operator):
    client.force_login(operator)
    r = client.post("/jobs/new/", {"name": "train", "kind": "train", "command": "python x.py\x00", "gpus": "0"})
    assert r.status_code == 400 and r.json()["error"].startswith("command: "), r.content


@pytest.mark.django_db
def test_a_body_that_is_not_json_says_so(client, operator):
    client.force_login(operator)
    r = client.post("/api/v1/jobs", data=b'{"name": ', content_type="application/json")
    assert r.status_code == 400 and r.json()["error"].startswith("body: is not valid JSON"), r.content


@pytest.mark.django_db
def test_a_token_with_a_nul_in_its_prefix_is_unknown_not_an_error(client, machine):
    for token in ("hwu_\x00\x00\x00\x00\x00\x00\x00\x00_secret", "hwa_abc\x00defg_secret"):
        assert client.get("/api/v1/machines", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
        assert (
            client.post(
                "/api/v1/ingest", data=b"{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
            ).status_code
            == 401
        )
        assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
