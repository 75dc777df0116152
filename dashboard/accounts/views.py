"""Personal API tokens: each user creates, sees (once) and revokes their own."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from .models import ApiToken
from .signals import TokenRefused, token_issued


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    new_token = error = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()[:100]
        try:
            with transaction.atomic():
                new_token = ApiToken.issue(request.user, name)
                token = ApiToken.find(new_token)
                token_issued.send(sender=ApiToken, token=token, request=request)
        except TokenRefused as exc:
            new_token, error = None, str(exc)
    context = {
        "tokens": ApiToken.objects.filter(user=request.user).order_by("-created_at"),
        "new_token": new_token,
        "error": error,
    }
    return render(request, "accounts/tokens.html", context)


@login_required
@require_POST
def revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)  # only one's own
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        messages.success(request, f"Revoked {token}.")
    return redirect("accounts:tokens")
