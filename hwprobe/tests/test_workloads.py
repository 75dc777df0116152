"""The built-in workloads: the model's gradients, train (loss falls, checkpoints), serve (HTTP, metrics, load)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hwprobe.workloads import mingru, parse_progress, progress_line

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "hwprobe" / "workloads" / "texts" / "coriolanus.txt").read_text()

needs_gpu = pytest.mark.skipif(not mingru.torch_cuda(), reason="needs PyTorch and a visible CUDA GPU")


class Proc:
    """A workload process whose stdout lines arrive on a queue (so reads can time out)."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "hwprobe.workloads", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, predicate, timeout_s: float = 20.0) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no such line in {self.seen}")

    def finish(self, timeout_s: float = 30.0) -> list[str]:
        code = self.p.wait(timeout_s)
        time.sleep(0.1)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        assert code == 0, self.seen
        return self.seen

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def progress(lines: list[str]) -> list[dict]:
    return [f for f in map(parse_progress, lines) if f is not None]


def test_the_progress_line_format_reads_back():
    line = progress_line("train", step=3, tokens=6144, elapsed_s=1.04, tokens_per_s=5120.25, loss=2.31456)
    assert line == "HWPROBE_PROGRESS kind=train step=3 tokens=6144 elapsed_s=1.0 tokens_per_s=5120.2 loss=2.315"
    assert parse_progress(line) == {
        "kind": "train",
        "step": 3,
        "tokens": 6144,
        "elapsed_s": 1.0,
        "tokens_per_s": 5120.2,
        "loss": 2.315,
    }
    assert parse_progress("step=3 loss=1") is None


def test_the_hand_written_gradients_match_finite_differences(monkeypatch):
    monkeypatch.setattr(mingru, "DTYPE", np.float64)
    cfg = mingru.Config("abcdef", dim=4, hidden=5, layers=2)
    params = {k: v.astype(np.float64) for k, v in mingru.init_params(cfg, 3).items()}
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 6, (2, 7)), rng.integers(0, 6, (2, 7))
    _, grads = mingru.loss_and_grads(params, cfg, idx, targets)
    for name, value in params.items():
        for _ in range(3):
            i = tuple(int(rng.integers(0, n)) for n in value.shape)
            old = value[i]
            value[i] = old + 1e-6
            up, _ = mingru.loss_and_grads(params, cfg, idx, targets)
            value[i] = old - 1e-6
            down, _ = mingru.loss_and_grads(params, cfg, idx, targets)
            value[i] = old
            numeric = (up - down) / 2e-6
            assert abs(numeric - grads[name][i]) <= 1e-5 * (abs(numeric) + 1e-3), name


def test_a_saved_model_loads_back_without_pickle(tmp_path):
    cfg = mingru.Config("ab\n", dim=4, hidden=6, layers=3)
    params = mingru.init_params(cfg)
    mingru.save(tmp_path / "m.npz", params, cfg, {"adam.t": np.array(5)})
    loaded, cfg2, extra = mingru.load(tmp_path / "m.npz")
    assert cfg2 == cfg and int(extra["adam.t"]) == 5
    assert all(np.array_equal(loaded[k], params[k]) for k in params)
    np.savez(tmp_path / "other.npz", x=np.zeros(2), vocab=np.array("ab"), dims=np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="not a minGRU model"):
        mingru.load(tmp_path / "other.npz")


def test_generation_is_deterministic_at_temperature_zero():
    cfg = mingru.Config("abc\n")
    params = mingru.init_params(cfg)
    first = mingru.generate(params, cfg, mingru.encode(cfg, "abz"), 10, temperature=0)
    assert len(first) == 10 and first == mingru.generate(params, cfg, [0, 1], 10, temperature=0)


def test_training_prints_progress_every_second_and_the_loss_falls(tmp_path):
    proc = Proc("train", "--seconds", "6", "--out", "model.npz", cwd=tmp_path)
    try:
        lines = proc.finish(60)
    finally:
        proc.kill()
    reports = progress(lines)
    regular, final = reports[:-1], reports[-1]
    assert len(regular) >= 4
    assert all(r["kind"] == "train" and r["tokens_per_s"] > 0 for r in regular)
    assert [r["step"] for r in regular] == sorted(r["step"] for r in regular)
    assert regular[-1]["loss"] < regular[0]["loss"] - 0.2, [r["loss"] for r in regular]
    assert final["final"] == 1 and final["step"] >= regular[-1]["step"]
    params, cfg, extra = mingru.load(tmp_path / "model.npz")
    assert "\n" in cfg.vocab and int(extra["adam.t"]) == final["step"]


def test_sigterm_saves_a_checkpoint_that_resume_continues_from(tmp_path):
    proc = Proc("train", "--seconds", "0", "--out", "ckpt.npz", cwd=tmp_path)
    try:
        proc.wait_line(lambda line: line.startswith("HWPROBE_PROGRESS"))
        proc.p.send_signal(signal.SIGTERM)
        lines = proc.finish(20)
    finally:
        proc.kill()
    assert "saved the model to ckpt.npz" in lines
    steps = int(mingru.load(tmp_path / "ckpt.npz")[2]["adam.t"])
    assert steps > 0
    again = Proc("train", "--seconds", "1", "--out", "ckpt.npz", "--resume", cwd=tmp_path)
    try:
        lines = again.finish(30)
    finally:
        again.kill()
    assert "resuming from ckpt.npz" in lines
    assert int(mingru.load(tmp_path / "ckpt.npz")[2]["adam.t"]) == steps + progress(lines)[-1]["step"]


def post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, value in (line.split(" ") for line in text.splitlines() if line and not line.startswith("#"))
    }


def test_serve_answers_generate_and_counts_tokens_in_metrics(tmp_path):
    proc = Proc("serve", "--port", "0", "--seconds", "0", cwd=tmp_path)
    try:
        url = proc.wait_line(lambda line: line.startswith("serving on ")).split()[2]
        before = metrics(url)
        assert before["hwprobe_serve_requests_total"] == 0
        status, answer = post(url + "/generate", {"prompt": "First Citizen:\n", "max_tokens": 20})
        assert status == 200
        assert answer["prompt_tokens"] == 15 and answer["generated_tokens"] == 20 and len(answer["text"]) == 20
        after = metrics(url)
        assert after["hwprobe_serve_requests_total"] == 1
        assert after["hwprobe_serve_prompt_tokens_total"] == 15
        assert after["hwprobe_serve_generated_tokens_total"] == 20
        status, answer = post(url + "/generate", {"prompt": 3})
        assert status == 400 and "prompt" in answer["error"]
        assert metrics(url)["hwprobe_serve_request_errors_total"] == 1
        proc.p.send_signal(signal.SIGTERM)
        lines = proc.finish(20)
    finally:
        proc.kill()
    assert progress(lines)[-1]["final"] == 1 and progress(lines)[-1]["requests"] == 1


def test_serve_under_its_own_load_reports_generated_tokens_per_second(tmp_path):
    proc = Proc("serve", "--port", "0", "--seconds", "3", "--load", "2", "--load-tokens", "16", cwd=tmp_path)
    try:
        lines = proc.finish(30)
    finally:
        proc.kill()
    reports = progress(lines)
    assert len(reports) >= 3
    assert all(r["kind"] == "serve" for r in reports)
    assert reports[-1]["final"] == 1 and reports[-1]["generated_tokens"] > 0
    assert all(r["tokens_per_s"] > 0 for r in reports)
    assert reports[-1]["generated_tokens"] == 16 * reports[-1]["requests"]


def test_serve_loads_a_trained_model(tmp_path):
    cfg = mingru.Config("xyz\n", dim=8, hidden=8, layers=1)
    mingru.save(tmp_path / "m.npz", mingru.init_params(cfg), cfg)
    proc = Proc("serve", "--port", "0", "--seconds", "0", "--model", "m.npz", cwd=tmp_path)
    try:
        url = proc.wait_line(lambda line: line.startswith("serving on ")).split()[2]
        status, answer = post(url + "/generate", {"prompt": "xy", "max_tokens": 5})
        assert status == 200 and set(answer["text"]) <= set("xyz\n")
        proc.p.send_signal(signal.SIGTERM)
        proc.finish(20)
    finally:
        proc.kill()


@needs_gpu
def test_the_gpu_trainer_computes_the_same_loss_as_numpy():
    cfg = mingru.Config("".join(sorted(set(TEXT))), dim=32, hidden=48, layers=2)
    params = mingru.init_params(cfg, 5)
    data = np.array(mingru.encode(cfg, TEXT))
    starts = np.random.default_rng(0).integers(0, len(data) - 65, 16)
    window = data[starts[:, None] + np.arange(65)]
    expected, _ = mingru.loss_and_grads(params, cfg, window[:, :-1], window[:, 1:])
    trainer = mingru.TorchTrainer(params, cfg, lr=1e-3)
    assert trainer.step(window[:, :-1], window[:, 1:]) == pytest.approx(expected, rel=1e-4)
    assert set(trainer.params()) == set(params)


@needs_gpu
def test_training_on_the_gpu_reports_progress_and_saves_a_model_serve_can_load(tmp_path):
    proc = Proc("train", "--seconds", "8", "--device", "cuda", "--out", "gpu.npz", cwd=tmp_path)
    try:
        lines = proc.finish(90)
    finally:
        proc.kill()
    assert any("on cuda (PyTorch)" in line for line in lines), lines
    reports = progress(lines)
    assert reports[-2]["loss"] < reports[0]["loss"] - 0.2, [r["loss"] for r in reports]
    print("\ngpu train:", lines[0], reports[-1])
    assert int(mingru.load(tmp_path / "gpu.npz")[2]["adam.t"]) == reports[-1]["step"]
    serve = Proc("serve", "--port", "0", "--seconds", "2", "--model", "gpu.npz", "--load", "2", cwd=tmp_path)
    try:
        assert progress(serve.finish(30))[-1]["generated_tokens"] > 0
    finally:
        serve.kill()
