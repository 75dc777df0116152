"""The host's allowlist: built-in defaults, argument patterns, shell, environment, file errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hwprobe import policy
from hwprobe.policy import Policy, PolicyError, Rule

ROOT = Path(__file__).resolve().parents[2]


def spec(argv=None, shell=None, env=None, workdir=None) -> dict:
    return {
        "name": "j",
        "kind": "train",
        "argv": argv,
        "shell": shell,
        "workdir": workdir,
        "env": env or {},
        "gpus": [],
        "gpu_uuids": [],
        "max_runtime_s": None,
        "grace_s": 10,
    }


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("python", ["python", "python3", sys.executable])
@pytest.mark.parametrize("workload", ["train", "serve"])
def test_without_a_file_the_built_in_workloads_are_allowed(python, workload):
    assert Policy().check(spec([python, "-m", "hwprobe.workloads", workload, "--seconds", "3"])) is None
    assert Policy().check(spec([python, "-m", "hwprobe.workloads", workload])) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["touch", "/tmp/x"],
        ["python", "-m", "hwprobe.workloads", "evil"],
        ["python", "-m", "hwprobe.workloadsX", "train"],
        ["python", "-c", "import os"],
        ["/tmp/python", "-m", "hwprobe.workloads", "train"],
    ],
)
def test_without_a_file_anything_else_is_refused_and_the_reason_names_what_is_allowed(argv):
    reason = Policy().check(spec(argv))
    assert reason is not None
    assert "not in this host's allowlist" in reason
    assert "python -m hwprobe.workloads train|serve" in reason
    assert "no configuration file" in reason


def test_shell_strings_are_refused_unless_the_host_allows_them():
    assert "shell commands are not allowed" in Policy().check(spec(shell="echo hi"))
    assert Policy(allow_shell=True).check(spec(shell="echo hi")) is None


def test_patterns_match_argument_by_argument():
    rule = Rule("finetune", ("python3", "train.py", "*"))
    assert rule.matches(["python3", "train.py", "--epochs=3"], None)
    assert not rule.matches(["python3", "train.py"], None)  # one pattern, one argument
    assert not rule.matches(["python3", "train.py", "a", "b"], None)
    assert not rule.matches(["python3", "other.py", "a"], None)
    assert Rule("g", ("python3", "train_*.py")).matches(["python3", "train_llama.py"], None)


def test_a_trailing_double_star_matches_any_number_of_remaining_arguments():
    rule = Rule("vllm", ("vllm", "serve", "**"))
    assert rule.matches(["vllm", "serve"], None)
    assert rule.matches(["vllm", "serve", "model", "--port", "8000"], None)
    assert not rule.matches(["vllm", "bench"], None)
    assert not rule.matches(["vllm"], None)


def test_a_rule_with_a_workdir_pattern_needs_a_matching_workdir():
    rule = Rule("llama", ("python3", "train.py"), workdir="/srv/llama*")
    assert rule.matches(["python3", "train.py"], "/srv/llama-7b")
    assert not rule.matches(["python3", "train.py"], "/tmp")
    assert not rule.matches(["python3", "train.py"], None)


def test_a_file_lists_allowed_commands_and_keeps_the_built_ins(tmp_path):
    path = write(
        tmp_path,
        """
run_as = "mluser"
allow_shell = false
pass_env = ["HF_*"]
[[allow]]
name = "llama-finetune"
argv = ["python3", "train.py", "*"]
""",
    )
    p = policy.load(path)
    assert p.run_as == "mluser" and p.pass_env == ("HF_*",) and p.source == path
    assert p.check(spec(["python3", "train.py", "--lr=1e-4"])) is None
    assert p.check(spec(["python", "-m", "hwprobe.workloads", "train"])) is None
    reason = p.check(spec(["python3", "evil.py", "x"]))
    assert path in reason and "llama-finetune (python3 train.py '*')" in reason


def test_builtin_workloads_can_be_switched_off(tmp_path):
    p = policy.load(write(tmp_path, "builtin_workloads = false\n"))
    assert "allowed: nothing" in p.check(spec(["python", "-m", "hwprobe.workloads", "train"]))


def test_environment_variables_that_change_the_code_that_runs_are_refused():
    allowed = ["python", "-m", "hwprobe.workloads", "train"]
    for name in ("LD_PRELOAD", "PYTHONPATH", "PATH", "DYLD_INSERT_LIBRARIES", "BASH_ENV"):
        assert name in Policy().check(spec(allowed, env={name: "/tmp/evil"}))
    assert Policy().check(spec(allowed, env={"HF_HOME": "/data/hf", "EPOCHS": "3"})) is None
    assert Policy(deny_env=()).check(spec(allowed, env={"PYTHONPATH": "/x"})) is None


def test_an_empty_command_is_refused():
    assert "no command" in Policy().check(spec([]))


@pytest.mark.parametrize(
    "text, words",
    [
        ("allow_shel = true\n", "unknown key(s) allow_shel"),
        ("allow_shell = 1\n", "allow_shell must be true or false"),
        ("[[allow]]\nargv = 'python'\n", "allow[0].argv must be a list of strings"),
        ("[[allow]]\nargv = ['**']\n", "must name a program first"),
        ("[[allow]]\nargv = ['a', '**', 'b']\n", "may only be the last"),
        ("[[allow]]\nargv = ['a']\nuser = 'x'\n", "allow[0]: unknown key(s) user"),
        ("allow_shell = \n", "not valid TOML"),
    ],
)
def test_a_broken_file_is_an_error_that_names_the_key(tmp_path, text, words):
    with pytest.raises(PolicyError, match=None) as info:
        policy.load(write(tmp_path, text))
    assert words in str(info.value)


def test_a_missing_named_file_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        policy.load(str(tmp_path / "nope.toml"))


def test_the_file_comes_from_the_argument_then_the_environment(tmp_path, monkeypatch):
    env_file = write(tmp_path, "allow_shell = true\n")
    monkeypatch.setenv("HWPROBE_CONFIG", env_file)
    assert policy.load().allow_shell is True
    other = tmp_path / "other.toml"
    other.write_text("allow_shell = false\n")
    assert policy.load(str(other)).allow_shell is False
    monkeypatch.delenv("HWPROBE_CONFIG")
    assert policy.config_path() in (None, policy.DEFAULT_PATH)


def test_the_example_file_is_valid():
    p = policy.load(str(ROOT / "hwprobe" / "worker.example.toml"))
    assert [r.name for r in p.rules] == ["llama-finetune", "vllm"]
    assert p.check(spec(["vllm", "serve", "meta-llama/Llama-3.1-8B"])) is None


def test_is_builtin_recognises_the_workloads():
    assert policy.is_builtin(["python3", "-m", "hwprobe.workloads", "serve", "--port", "0"])
    assert not policy.is_builtin(["python3", "-m", "http.server"])
    assert not policy.is_builtin(None)


def test_the_summary_for_the_dashboard_lists_patterns_as_written_and_the_built_ins(tmp_path):
    path = write(
        tmp_path,
        'run_as = "mluser"\nallow_shell = true\n'
        '[[allow]]\nname = "ft"\nargv = ["python3", "train.py", "*"]\nworkdir = "/srv/llama*"\n'
        '[[allow]]\nargv = ["vllm", "serve", "**"]\n',
    )
    summary = policy.load(path).summary()
    assert summary == {
        "builtin_workloads": True,
        "allow_shell": True,
        "run_as": "mluser",
        "templates": [
            {
                "name": "built-in train",
                "argv": ["python", "-m", "hwprobe.workloads", "train", "--seconds", "60"],
                "workdir": None,
            },
            {
                "name": "built-in serve",
                "argv": [
                    "python",
                    "-m",
                    "hwprobe.workloads",
                    "serve",
                    "--port",
                    "8100",
                    "--load",
                    "2",
                    "--seconds",
                    "60",
                ],
                "workdir": None,
            },
            {"name": "ft", "argv": ["python3", "train.py", "*"], "workdir": "/srv/llama*"},
            {"name": "vllm", "argv": ["vllm", "serve", "**"], "workdir": None},
        ],
        "deny_env": list(policy.DEFAULT_DENY_ENV),
    }
    # Each built-in template is a command the host's own check accepts.
    for template in summary["templates"][:2]:
        assert Policy().check(spec(template["argv"])) is None
    without = Policy(builtin_workloads=False).summary()
    assert without == {
        "builtin_workloads": False,
        "allow_shell": False,
        "run_as": None,
        "templates": [],
        "deny_env": list(policy.DEFAULT_DENY_ENV),
    }
