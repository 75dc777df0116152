"""What each machine's worker allows, as it last reported it: templates for the form, early refusals.

A worker sends its host policy's summary (``hwprobe.policy.Policy.summary``) to
``POST /api/v1/agent/policy``; it is stored on ``Machine.worker_policy``. The matching is
hwprobe's own (``Rule.matches``), so the form refuses only what the worker would refuse too. The
worker still checks every job when it arrives: a host may edit its policy after reporting it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from typing import Any, TypedDict

from dashboard.fleet.models import Machine
from hwprobe.policy import BUILTIN_TEMPLATES, DEFAULT_DENY_ENV, WORKLOADS, Rule, denied_variable

# What the worker's built-in rules accept: any interpreter path (the host's may differ from ours).
_BUILTIN_RULES = [Rule(f"built-in {w}", ("*python*", "-m", "hwprobe.workloads", w, "**")) for w in WORKLOADS]
_PLAIN_ARG = re.compile(r"[\w@%+=:,./*?\[\]-]+")


class Template(TypedDict):
    name: str
    argv: list[str]
    workdir: str | None
    command: str  # the line for the form's command field, patterns left as written
    kind: str | None  # "train" / "serve" for the built-in workloads, else None


class MachinePolicy(TypedDict):
    reported: bool
    allow_shell: bool
    templates: list[Template]
    note: str  # what the form says under the picker


def command_line(argv: Iterable[str]) -> str:
    """``argv`` as one line the form splits back into the same list; ``*`` stays bare to be seen."""
    return " ".join(a if _PLAIN_ARG.fullmatch(a) else shlex.quote(a) for a in argv)


def _template(raw: dict[str, Any]) -> Template:
    argv = list(raw["argv"])
    kind = next((w for w in WORKLOADS if argv[1:4] == ["-m", "hwprobe.workloads", w]), None)
    return {
        "name": raw["name"],
        "argv": argv,
        "workdir": raw.get("workdir"),
        "command": command_line(argv),
        "kind": kind,
    }


BUILTINS: list[Template] = [_template({"name": n, "argv": a}) for n, a in BUILTIN_TEMPLATES]


def templates(summary: dict[str, Any] | None) -> list[Template]:
    """The templates a reported summary lists (the built-ins when nothing was reported)."""
    if summary is None:
        return BUILTINS
    return [_template(t) for t in summary.get("templates") or []]


def machine_policy(machine: Machine) -> MachinePolicy:
    """What the form shows for ``machine``: its templates and whether its worker takes shell lines."""
    summary = machine.worker_policy
    if summary is None:
        return {
            "reported": False,
            "allow_shell": False,
            "templates": [],
            "note": "no worker has reported from this machine yet — jobs wait until one does",
        }
    shell = bool(summary.get("allow_shell"))
    return {
        "reported": True,
        "allow_shell": shell,
        "templates": templates(summary),
        "note": "shell allowed" if shell else "argument lists only",
    }


def automatic_policy(machines: Iterable[Machine]) -> MachinePolicy:
    """For automatic placement: the templates every online machine's worker reported, else the built-ins."""
    summaries = [m.worker_policy for m in machines if m.worker_policy is not None and m.is_online()]
    if not summaries:
        return {
            "reported": False,
            "allow_shell": False,
            "templates": BUILTINS,
            "note": "no online machine's worker has reported yet: these are the built-in workloads, "
            "allowed unless a host's config says otherwise",
        }
    common = [t for t in templates(summaries[0]) if all(any(_same(t, o) for o in templates(s)) for s in summaries[1:])]
    shell = all(s.get("allow_shell") for s in summaries)
    note = "templates every online machine's worker allows"
    return {
        "reported": True,
        "allow_shell": shell,
        "templates": common,
        "note": note + (" · shell allowed" if shell else " · argument lists only"),
    }


def _same(a: Template, b: Template) -> bool:
    return a["argv"] == b["argv"] and a["workdir"] == b["workdir"]


def _rules(summary: dict[str, Any]) -> list[Rule]:
    rules = [Rule(t["name"], tuple(t["argv"]), t.get("workdir")) for t in summary.get("templates") or []]
    return rules + (_BUILTIN_RULES if summary.get("builtin_workloads") else [])


def _allowed(summary: dict[str, Any]) -> str:
    builtin = {(n, a) for n, a in BUILTIN_TEMPLATES}
    parts = [
        command_line(t["argv"]) + (f" (in {t['workdir']})" if t.get("workdir") else "")
        for t in summary.get("templates") or []
        if (t["name"], tuple(t["argv"])) not in builtin
    ]
    if summary.get("builtin_workloads"):
        parts.insert(0, "python -m hwprobe.workloads train|serve ...")
    return "; ".join(parts) or "no command at all"


def refusal(machine: Machine, argv: list[str] | None, shell: str, workdir: str | None) -> str | None:
    """Why ``machine``'s worker would refuse this command as it last reported its policy, else None.

    None as well when no worker has reported: then nothing is known, and the job waits for one.
    """
    summary = machine.worker_policy
    if summary is None:
        return None
    if shell:
        if summary.get("allow_shell"):
            return None
        return (
            f"{machine.name}'s worker takes argument lists only, not shell lines; it allows only: {_allowed(summary)}"
        )
    if argv and any(rule.matches(list(argv), workdir or None) for rule in _rules(summary)):
        return None
    return f"{machine.name}'s worker allows only: {_allowed(summary)}"


def _deny_env(summary: dict[str, Any] | None) -> list[str]:
    # A worker older than the deny_env summary, or none yet: the hosts' default list, which a host
    # keeps unless its config says otherwise.
    if summary is None or summary.get("deny_env") is None:
        return list(DEFAULT_DENY_ENV)
    return list(summary["deny_env"])


def env_refusal(target: Machine | None, env: dict[str, str], machines: Iterable[Machine] = ()) -> str | None:
    """Why the job's environment would be refused, from the deny lists the workers reported; else None.

    For a named machine its worker's list decides. For automatic placement (``target`` None) a
    variable is refused when every online worker in ``machines`` that reported would refuse it
    (the default list when none has): a job no host would run must not wait forever.
    """
    if target is not None:
        name = denied_variable(env, _deny_env(target.worker_policy))
        return (
            f"{name} is not allowed on {target.name} (its worker refuses: {', '.join(_deny_env(target.worker_policy))})"
            if name
            else None
        )
    summaries = [m.worker_policy for m in machines if m.worker_policy is not None and m.is_online()] or [None]
    for name in env:
        if all(denied_variable([name], _deny_env(summary)) for summary in summaries):
            return f"{name} is not allowed by any host's worker (they refuse variables such as LD_*, PYTHONPATH, PATH)"
    return None
