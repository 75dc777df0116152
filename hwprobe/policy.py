"""What this host lets the dashboard run: an allowlist the host owns, checked before every job.

The server decides *where* a job goes; the machine decides *whether* it runs. A job whose
command is not allowed here is finished with outcome ``refused`` and the reason, and nothing
starts, whatever the server asked.

The file is TOML, read from ``--config``, else ``$HWPROBE_CONFIG``, else
``/etc/hwprobe/worker.toml``. With no file at all, only the built-in workloads may run:
``python|python3|<this interpreter> -m hwprobe.workloads train|serve [any arguments]``.
Every key is optional; an unknown key is an error (a typo must not loosen or tighten the
policy silently). See ``hwprobe/worker.example.toml``::

    run_as = "mluser"          # run jobs as this user (the worker must then run as root)
    allow_shell = false        # jobs given as one shell string run only when true
    builtin_workloads = true   # keep `python -m hwprobe.workloads train|serve` allowed
    jobs_dir = "/var/lib/hwprobe/jobs"   # a job without a workdir runs in jobs_dir/<job id>
    pass_env = ["LD_LIBRARY_PATH", "HF_*"]  # copied from the worker's own environment
    deny_env = ["LD_*", "PYTHONPATH"]     # job variables refused (default: DEFAULT_DENY_ENV)

    [[allow]]
    name = "llama-finetune"
    argv = ["python3", "train.py", "*"]   # fnmatch per argument
    workdir = "/srv/llama*"               # optional: the job's workdir must match

    [[allow]]
    name = "vllm"
    argv = ["vllm", "serve", "**"]        # a trailing "**" matches any number of arguments

A rule matches when the job's argument list has the same length as ``argv`` and each
argument matches its pattern (``fnmatch``, case-sensitive: ``*`` may match ``/`` and spaces);
a last pattern ``**`` matches zero or more remaining arguments.

Job environment variables whose names match ``deny_env`` refuse the job: they would let an
allowed command run other code (``LD_PRELOAD``, ``PYTHONPATH``...).
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = "/etc/hwprobe/worker.toml"

# Variables that change which code an allowed command runs, or how the shell behaves.
DEFAULT_DENY_ENV = (
    "LD_*",
    "DYLD_*",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONINSPECT",
    "PYTHONEXECUTABLE",
    "PATH",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "IFS",
)

WORKLOADS = ("train", "serve")

# The built-in workloads as the dashboard's form offers them: a full command to start from.
BUILTIN_TEMPLATES = (
    ("built-in train", ("python", "-m", "hwprobe.workloads", "train", "--seconds", "60")),
    (
        "built-in serve",
        ("python", "-m", "hwprobe.workloads", "serve", "--port", "8100", "--load", "2", "--seconds", "60"),
    ),
)


class PolicyError(ValueError):
    """The configuration file is unreadable or invalid; the message names the file and key."""


@dataclass(frozen=True)
class Rule:
    """One allowed command: a name for people and one fnmatch pattern per argument."""

    name: str
    argv: tuple[str, ...]
    workdir: str | None = None

    def matches(self, argv: list[str], workdir: str | None) -> bool:
        """True if ``argv`` (and ``workdir``, when the rule names one) fit this rule."""
        if self.workdir is not None and not fnmatch.fnmatchcase(workdir or "", self.workdir):
            return False
        patterns = list(self.argv)
        if patterns and patterns[-1] == "**":
            patterns.pop()
            if len(argv) < len(patterns):
                return False
            argv = argv[: len(patterns)]
        elif len(argv) != len(patterns):
            return False
        return all(fnmatch.fnmatchcase(arg, pat) for arg, pat in zip(argv, patterns, strict=True))

    def describe(self) -> str:
        return f"{self.name} ({shlex.join(self.argv)})"


def denied_variable(names: Iterable[str], deny_env: Iterable[str]) -> str | None:
    """The first of ``names`` that a ``deny_env`` pattern matches (fnmatch, case-sensitive), else None."""
    patterns = tuple(deny_env)
    return next((name for name in names if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)), None)


def builtin_rules() -> list[Rule]:
    """The built-in workloads, with any usual name of the Python interpreter."""
    pythons = dict.fromkeys(["python", "python3", sys.executable])
    return [Rule(f"built-in {w}", (py, "-m", "hwprobe.workloads", w, "**")) for w in WORKLOADS for py in pythons]


def is_builtin(argv: list[str] | None) -> bool:
    """True if ``argv`` runs one of the built-in workloads."""
    return bool(argv) and any(r.matches(list(argv or []), None) for r in builtin_rules())


@dataclass
class Policy:
    """The host's rules. ``source`` is the file they came from (None: built-in defaults)."""

    rules: list[Rule] = field(default_factory=list)
    allow_shell: bool = False
    builtin_workloads: bool = True
    run_as: str | None = None
    jobs_dir: str | None = None
    pass_env: tuple[str, ...] = ()
    deny_env: tuple[str, ...] = DEFAULT_DENY_ENV
    source: str | None = None

    def all_rules(self) -> list[Rule]:
        return (builtin_rules() if self.builtin_workloads else []) + self.rules

    def allowed_summary(self) -> str:
        parts = [r.describe() for r in self.rules]
        if self.builtin_workloads:
            parts.insert(0, "the built-in workloads (python -m hwprobe.workloads train|serve ...)")
        if self.allow_shell:
            parts.append("shell commands")
        return "; ".join(parts) or "nothing"

    def summary(self) -> dict[str, Any]:
        """What the worker tells the dashboard (``POST /api/v1/agent/policy``): patterns as written.

        ``run_as`` is None when jobs run as the worker's own user; ``workdir`` None: any folder.
        """
        templates = [
            {"name": name, "argv": list(argv), "workdir": None}
            for name, argv in (BUILTIN_TEMPLATES if self.builtin_workloads else ())
        ]
        templates += [{"name": r.name, "argv": list(r.argv), "workdir": r.workdir} for r in self.rules]
        return {
            "builtin_workloads": self.builtin_workloads,
            "allow_shell": self.allow_shell,
            "run_as": self.run_as,
            "templates": templates,
            "deny_env": list(self.deny_env),  # so the dashboard refuses such a job at submission
        }

    def check(self, spec: dict[str, Any]) -> str | None:
        """None if the job may run here, else the reason it may not (naming what is allowed)."""
        where = f" ({self.source})" if self.source else " (no configuration file: built-in defaults)"
        name = denied_variable(spec.get("env") or {}, self.deny_env)
        if name is not None:
            return f"the environment variable {name} is not allowed on this host{where}"
        shell, argv = spec.get("shell"), spec.get("argv")
        if shell:
            if self.allow_shell:
                return None
            return f"shell commands are not allowed on this host{where}; allowed: {self.allowed_summary()}"
        if not argv or not all(isinstance(a, str) for a in argv):
            return "the job has no command (argv is empty)"
        for rule in self.all_rules():
            if rule.matches(list(argv), spec.get("workdir")):
                return None
        return f"`{shlex.join(argv)}` is not in this host's allowlist{where}; allowed: {self.allowed_summary()}"


_KEYS = {"run_as", "allow_shell", "builtin_workloads", "jobs_dir", "pass_env", "deny_env", "allow"}
_RULE_KEYS = {"name", "argv", "workdir"}


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where} must be a list of strings")
    return tuple(value)


def parse(data: dict[str, Any], source: str | None = None) -> Policy:
    """A Policy from the parsed TOML table; raises PolicyError naming the bad key."""
    src = source or "configuration"
    unknown = set(data) - _KEYS
    if unknown:
        raise PolicyError(f"{src}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}")
    policy = Policy(source=source)
    for key in ("allow_shell", "builtin_workloads"):
        if key in data:
            if not isinstance(data[key], bool):
                raise PolicyError(f"{src}: {key} must be true or false")
            setattr(policy, key, data[key])
    for key in ("run_as", "jobs_dir"):
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise PolicyError(f"{src}: {key} must be a non-empty string")
            setattr(policy, key, data[key])
    if "pass_env" in data:
        policy.pass_env = _str_list(data["pass_env"], f"{src}: pass_env")
    if "deny_env" in data:
        policy.deny_env = _str_list(data["deny_env"], f"{src}: deny_env")
    rules = data.get("allow", [])
    if not isinstance(rules, list):
        raise PolicyError(f"{src}: allow must be an array of tables ([[allow]])")
    for i, table in enumerate(rules):
        where = f"{src}: allow[{i}]"
        if not isinstance(table, dict):
            raise PolicyError(f"{where} must be a table")
        bad = set(table) - _RULE_KEYS
        if bad:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(bad))}")
        argv = _str_list(table.get("argv"), f"{where}.argv")
        if not argv or argv[0] == "**":
            raise PolicyError(f"{where}.argv must name a program first")
        if "**" in argv[:-1]:
            raise PolicyError(f'{where}.argv: "**" may only be the last pattern')
        workdir = table.get("workdir")
        if workdir is not None and not isinstance(workdir, str):
            raise PolicyError(f"{where}.workdir must be a string")
        name = table.get("name") or argv[0]
        if not isinstance(name, str):
            raise PolicyError(f"{where}.name must be a string")
        policy.rules.append(Rule(name, argv, workdir))
    return policy


def config_path(path: str | None = None) -> str | None:
    """The file to read: ``path``, else $HWPROBE_CONFIG, else the default if it exists (None: none)."""
    if path:
        return path
    if os.environ.get("HWPROBE_CONFIG"):
        return os.environ["HWPROBE_CONFIG"]
    return DEFAULT_PATH if Path(DEFAULT_PATH).exists() else None


def load(path: str | None = None) -> Policy:
    """The host's policy; the built-in defaults when there is no file. Raises PolicyError."""
    chosen = config_path(path)
    if chosen is None:
        return Policy()
    try:
        with open(chosen, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        raise PolicyError(f"cannot read {chosen}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"{chosen} is not valid TOML: {err}") from err
    return parse(data, chosen)


def check(spec: dict[str, Any], policy: Policy | None = None) -> str | None:
    """None if ``spec`` may run on this host, else the refusal reason."""
    return (policy or load()).check(spec)
