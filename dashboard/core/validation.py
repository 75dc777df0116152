"""Text the databases can store: one rule for every input, so a bad character gets a 400, not a 500.

PostgreSQL refuses a NUL character (``\\u0000``) in text, while SQLite stores it; a lone UTF-16
surrogate (``\\ud800``, legal in a JSON escape) cannot be encoded as UTF-8 for either. Both used to
pass validation and then fail in the database with a 500. ``problem`` is the rule; it is applied

- to the URL (path parameters, query values) and to form posts by ``StorableRequestMiddleware``,
  for every view, pages and API alike;
- to every JSON body of the API by ``StorableTextParser``, the API's parser (``dashboard/web/api.py``);
- to the agent's ingest batches, which are parsed without Ninja, by the ``Text`` type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja.parser import Parser
from pydantic import AfterValidator

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, in words that follow a field name; None if it can."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which cannot be stored"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not valid Unicode"


def first_problem(data: Any, where: str = "") -> str | None:
    """The first ``"field.path: reason"`` among the strings (keys included) of decoded JSON, or None."""
    if isinstance(data, str):
        reason = problem(data)
        return f"{where or 'body'}: {reason}" if reason else None
    if isinstance(data, Mapping):
        for key, value in data.items():
            key = str(key)
            name = f"{where}.{key}" if where else key
            if problem(key):
                return f"{where or 'body'}: a key {problem(key)}"
            found = first_problem(value, name)
            if found:
                return found
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            found = first_problem(value, f"{where}[{i}]")
            if found:
                return found
    return None


def _check(value: str) -> str:
    reason = problem(value)
    if reason:
        raise ValueError(reason)
    return value


Text = Annotated[str, AfterValidator(_check)]
"""A ``str`` that the databases can store, for models validated without the API's parser."""


class UnstorableText(ValueError):
    """A JSON body holds text the databases cannot store; ``str()`` names the field."""


class StorableTextParser(Parser):
    """Ninja's JSON body parser, refusing unstorable text in any field of any request schema.

    Ninja turns a parser's exception into ``HttpError(400, "Cannot parse request body")`` raised
    from it; the API's HttpError handler answers with this exception's sentence instead.
    """

    def parse_body(self, request: HttpRequest) -> Any:
        data = super().parse_body(request)
        found = first_problem(data)
        if found:
            raise UnstorableText(found)
        return data


class StorableRequestMiddleware:
    """Refuses a request whose path parameters, query or form values cannot be stored: 400 naming them.

    Runs after URL resolution (``process_view``), so a path parameter is named as the view names
    it (``name`` in ``/api/v1/machines/{name}``); every view, API or page, is covered at once.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> HttpResponse | None:
        params = [(k, v) for k, v in kwargs.items() if isinstance(v, str)]
        params += [("path", a) for a in args if isinstance(a, str)]
        params += [(k, v) for k in request.GET for v in request.GET.getlist(k)]
        # Form posts (a JSON body leaves request.POST empty, unread): views that read a value by
        # hand, such as a select's slug, are covered as well as Django's CharFields are.
        params += [(k, v) for k in request.POST for v in request.POST.getlist(k)]
        for name, value in params:
            if problem(name):
                return JsonResponse({"error": f"request: a parameter name {problem(name)}"}, status=400)
            if problem(value):
                return JsonResponse({"error": f"{name}: {problem(value)}"}, status=400)
        return None
