"""Token counts and speeds from an Ollama API reply (``/api/generate``, ``/api/chat``, ``/api/embed``).

Ollama returns, with a finished reply (the last chunk when streaming), ``prompt_eval_count``
and ``eval_count`` (tokens) and ``prompt_eval_duration`` / ``eval_duration`` (nanoseconds).
A reply served from the prompt cache may leave the prompt fields out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OllamaCounts:
    """Tokens of one reply; the speeds in tokens/s are None where a duration is missing or 0."""

    prompt_tokens: int
    generated_tokens: int
    prompt_tokens_per_s: float | None
    generated_tokens_per_s: float | None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _rate(count: int, duration_ns: Any) -> float | None:
    if not count or isinstance(duration_ns, bool) or not isinstance(duration_ns, (int, float)) or duration_ns <= 0:
        return None
    return count / (duration_ns / 1e9)


def parse_response(reply: dict[str, Any]) -> OllamaCounts | None:
    """The counts of a reply, or None when it carries none (a partial chunk, ``/api/ps``...)."""
    if not isinstance(reply, dict) or ("eval_count" not in reply and "prompt_eval_count" not in reply):
        return None
    prompt, generated = _count(reply.get("prompt_eval_count")), _count(reply.get("eval_count"))
    return OllamaCounts(
        prompt,
        generated,
        _rate(prompt, reply.get("prompt_eval_duration")),
        _rate(generated, reply.get("eval_duration")),
    )
