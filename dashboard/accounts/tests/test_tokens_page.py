"""Every user manages their own personal API tokens, without the admin."""

from __future__ import annotations

import pytest

from dashboard.accounts.models import ApiToken


@pytest.mark.django_db
def test_a_viewer_creates_a_token_sees_it_once_and_it_works(client, viewer):
    client.force_login(viewer)
    page = client.post("/account/tokens/", {"name": "grafana"}).content.decode()
    token = ApiToken.objects.get(user=viewer)
    shown = page.split('<pre class="command">')[1].split("</pre>")[0]
    assert shown.startswith(f"hwu_{token.prefix}_") and token.digest not in page
    assert shown not in client.get("/account/tokens/").content.decode()  # shown once
    client.logout()
    assert client.get("/api/v1/machines", HTTP_AUTHORIZATION=f"Bearer {shown}").status_code == 200


@pytest.mark.django_db
def test_users_revoke_only_their_own_tokens(client, viewer, operator):
    ApiToken.issue(viewer, "mine")
    theirs = ApiToken.objects.get(pk=ApiToken.objects.get(user=viewer).pk)
    client.force_login(operator)
    assert client.post(f"/account/tokens/{theirs.pk}/revoke/").status_code == 404
    client.force_login(viewer)
    client.post(f"/account/tokens/{theirs.pk}/revoke/")
    theirs.refresh_from_db()
    assert theirs.revoked_at is not None


def test_the_tokens_page_needs_a_login(client, db):
    assert client.get("/account/tokens/").status_code == 302
