from typing import Any

from django import template

from dashboard.teams.tokens import own_teams

register = template.Library()


@register.simple_tag
def token_teams(user: Any) -> list:
    """The teams the tokens page offers to limit a new token to."""
    return own_teams(user)
