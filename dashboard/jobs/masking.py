"""Secrets in a job's environment: whose values are masked, for whom, and how.

Every signed-in user reads every job, its environment and its log; an ``HF_TOKEN`` there must not
be. A variable is secret when its name looks like one (``*TOKEN*``, ``*KEY*``, ``*PASSWORD*``,
``*SECRET*``, any case) or when the submitter marked it (``Job.secret_env``). Its value is shown
only to the job's owner and to admins, and appears nowhere else: the API, the pages, the audit
log and the job's log text all go through this module. The host still gets the real value.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

MASK = "********"
SECRET_NAME_PATTERNS = ("*TOKEN*", "*KEY*", "*PASSWORD*", "*SECRET*")
# A value this short is masked in the environment but not searched for in log text, where it
# would hide every "1" or "on" of the output and say nothing about the secret anyway.
MIN_LOG_MASK_CHARS = 4


def is_secret(name: str, marked: Iterable[str] = ()) -> bool:
    """True if ``name`` looks like a secret or the submitter marked it as one."""
    upper = name.upper()
    return name in set(marked) or any(fnmatch.fnmatchcase(upper, pattern) for pattern in SECRET_NAME_PATTERNS)


def masked_env(env: dict[str, str], marked: Iterable[str] = ()) -> dict[str, str]:
    """``env`` with each secret value replaced by MASK (names stay: they say what the job needs)."""
    marked = set(marked)
    return {name: MASK if is_secret(name, marked) else value for name, value in env.items()}


def sees_secrets(user: Any, job: Any) -> bool:
    """Only the job's owner and admins read its secret values."""
    return bool(user is not None and user.is_authenticated and (user.is_staff or user.pk == job.owner_id))


def env_for(user: Any, job: Any) -> dict[str, str]:
    """The job's environment as ``user`` may read it."""
    env = job.env or {}
    return dict(env) if sees_secrets(user, job) else masked_env(env, job.secret_env or ())


def mask_text(text: str, job: Any) -> str:
    """``text`` (the job's log) with every secret value of the job's environment replaced by MASK."""
    env, marked = job.env or {}, set(job.secret_env or ())
    # Longest first, so a secret that contains another is masked whole.
    values = sorted(
        {v for k, v in env.items() if is_secret(k, marked) and len(v) >= MIN_LOG_MASK_CHARS}, key=len, reverse=True
    )
    for value in values:
        text = text.replace(value, MASK)
    return text


def log_for(user: Any, job: Any, text: str) -> str:
    """A log chunk as ``user`` may read it."""
    return text if sees_secrets(user, job) else mask_text(text, job)
