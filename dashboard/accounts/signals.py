"""``token_issued`` is sent inside the transaction that creates a personal token from the tokens page.

Apps above accounts add to a new token (teams limits it to the teams the form names); a receiver
that raises ``TokenRefused`` undoes the token, and the page shows the message instead.
"""

from django.dispatch import Signal

token_issued = Signal()  # kwargs: token (an ApiToken), request (the POST that asked for it)


class TokenRefused(ValueError):
    """The token cannot be made as asked; the message is one sentence naming the field."""
