"""Tokens from job output: the built-in line, the presets on their fixtures, custom patterns,
and what the executor tells the agent while a job runs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hwprobe import channel
from hwprobe.progress import JobMeter, LineSplitter, make_parser
from hwprobe.tests.conftest import FIXTURES
from hwprobe.tests.test_engines import _Endpoint
from hwprobe.tests.test_executor import FakeDashboard, job_spec, run
from hwprobe.workloads import progress_line
from hwprobe.workloads.serve import Metrics

LOGS = FIXTURES / "progress"


@pytest.fixture
def dash() -> Iterator[FakeDashboard]:
    fake = FakeDashboard().start()
    yield fake
    fake.stop()


def total(pattern: str | None, text: str) -> dict[str, float]:
    parser, sums = make_parser(pattern), {}
    splitter = LineSplitter()
    for line in splitter.feed(text) + splitter.close():
        for kind, value in parser.feed(line).items():
            sums[kind] = sums.get(kind, 0.0) + value
    return sums


def test_the_built_in_training_line_gives_deltas_of_its_running_total() -> None:
    lines = [
        progress_line("train", step=10, tokens=20480, elapsed_s=1.0, tokens_per_s=20480.0, loss=2.5),
        "saved the model to mingru.npz",
        progress_line("train", step=25, tokens=51200, elapsed_s=2.5, tokens_per_s=20480.0, loss=2.4, final=1),
    ]
    parser = make_parser(None)
    assert [parser.feed(line) for line in lines] == [{"train": 20480.0}, {}, {"train": 30720.0}]


def test_the_built_in_serving_line_gives_prompt_and_generated_tokens() -> None:
    text = "\n".join(
        [
            "serving on http://127.0.0.1:40111 with a fresh untrained model",
            progress_line(
                "serve", requests=4, prompt_tokens=160, generated_tokens=128, elapsed_s=1.0, tokens_per_s=128.0
            ),
            progress_line(
                "serve", requests=9, prompt_tokens=350, generated_tokens=288, elapsed_s=2.0, tokens_per_s=160.0
            ),
        ]
    )
    assert total("hwprobe", text) == {"prompt": 350.0, "generated": 288.0}


def test_hf_trainer_logs_give_num_input_tokens_seen_through_the_progress_bar() -> None:
    assert total("hf-trainer", (LOGS / "hf_trainer.log").read_text()) == {"train": 3 * 10 * 8 * 512}


def test_a_lightning_progress_bar_redrawn_with_carriage_returns_gives_its_running_total() -> None:
    assert total("lightning", (LOGS / "lightning.log").read_text()) == {"train": 20 * 4096}


def test_build_nanogpt_step_lines_give_time_times_rate() -> None:
    sums = total("nanogpt", (LOGS / "build_nanogpt.log").read_text())
    assert sums["train"] == pytest.approx(5 * 524288, rel=1e-5)


def test_llm_c_step_lines_give_time_times_rate() -> None:
    sums = total("nanogpt", (LOGS / "llmc.log").read_text())
    assert sums["train"] == pytest.approx(3 * 256, rel=0.01)  # whole tokens/s: a little short


def test_a_custom_pattern_with_a_kind_group() -> None:
    pattern = r"served (?P<tokens>\d+) (?P<kind>prompt|generated) tokens"
    text = "served 10 prompt tokens\nserved 4 generated tokens\nserved 25 prompt tokens\nnoise 99\n"
    assert total(pattern, text) == {"prompt": 25.0, "generated": 4.0}


def test_a_running_total_that_starts_again_counts_from_zero() -> None:
    text = "tokens=1000\ntokens=1500\ntokens=200\ntokens=300\n"
    assert total(r"tokens=(?P<tokens>\d+)", text) == {"train": 1500.0 + 200 + 100}


def test_a_pattern_without_a_tokens_group_or_that_does_not_compile_is_refused() -> None:
    with pytest.raises(ValueError, match="tokens"):
        make_parser(r"step (\d+)")
    with pytest.raises(ValueError, match="regular expression"):
        make_parser(r"(?P<tokens>\d+")


def test_lines_are_cut_at_newlines_and_carriage_returns_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed("a\rb") == ["a"]
    assert splitter.feed("c\nd") == ["bc"]
    assert splitter.close() == ["d"]


# ---- the job meter and the agent's channel -------------------------------------------------


@pytest.fixture
def agent_side(tmp_path: Path) -> Iterator[channel.SocketListener]:
    """The agent's Unix socket (with a flush that answers at once), as the meter finds it."""
    ledger = channel.Ledger()
    listener = channel.SocketListener(tmp_path / "report.sock", channel.Channel(ledger, on_flush=lambda _: True))
    yield listener.start()
    listener.close()


def settle(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def sums(entries: list[dict[str, Any]]) -> dict[tuple[Any, str], dict[str, float]]:
    """Counts and active seconds per (job, source) over drained entries."""
    out: dict[tuple[Any, str], dict[str, float]] = {}
    for e in entries:
        row = out.setdefault((e["job_id"], e["source"]), {"prompt": 0, "generated": 0, "train": 0, "active_s": 0.0})
        for k in ("prompt", "generated", "train", "active_s"):
            row[k] += e.get(k, 0)
    return out


def test_progress_lines_carry_the_workloads_own_seconds(agent_side: Any) -> None:
    meter = JobMeter(12, None, port=0, socket_path=str(agent_side.path))
    for step, elapsed in ((1, 1.1), (2, 2.1), (3, 3.0)):
        line = progress_line("train", step=step, tokens=step * 4096, elapsed_s=elapsed, tokens_per_s=1.0, loss=3.0)
        meter.feed("stdout", line + "\n")
    meter.finish()
    assert meter.delivered
    settle(lambda: agent_side.channel.received >= 4)
    (row,) = sums(agent_side.channel.ledger.drain()).values()
    assert row["train"] == 3 * 4096
    assert row["active_s"] == pytest.approx(3.0)  # 1.1 + 1.0 + 0.9: the workload's clock, not ours


def test_the_built_in_serve_is_scraped_and_its_final_totals_are_counted_in_full(agent_side: Any) -> None:
    metrics = Metrics()
    endpoint = _Endpoint(metrics.exposition())
    try:
        meter = JobMeter(11, None, builtin_serve=True, port=0, socket_path=str(agent_side.path), scrape_interval_s=0.1)
        meter.start()
        meter.feed("stdout", f"serving on {endpoint.url.removesuffix('/metrics')} with a fresh untrained model\n")
        metrics.prompt_tokens, metrics.generated_tokens = 90, 64
        endpoint.body = metrics.exposition()
        settle(lambda: agent_side.channel.received >= 1)
        line = progress_line("serve", requests=3, prompt_tokens=90, generated_tokens=64, elapsed_s=1.0, tokens_per_s=1)
        meter.feed("stdout", line + "\n")
        # The server answered its last scrape, then served more and exited: its final line says how much.
        endpoint.close()
        final = progress_line(
            "serve", requests=5, prompt_tokens=150, generated_tokens=100, elapsed_s=1.5, tokens_per_s=1, final=1
        )
        meter.feed("stdout", final + "\n")
        meter.finish()
        assert meter.delivered
    finally:
        endpoint.close()
    settle(lambda: agent_side.channel.received >= 3)
    totals = sums(agent_side.channel.ledger.drain())
    assert set(totals) == {(11, "prometheus")}  # the serving kinds in its lines are not sent again
    assert (totals[(11, "prometheus")]["prompt"], totals[(11, "prometheus")]["generated"]) == (150, 100)
    assert totals[(11, "prometheus")]["active_s"] > 0


def test_a_metrics_url_sets_its_baseline_at_start_and_training_lines_still_count(agent_side: Any) -> None:
    metrics = Metrics()
    metrics.generated_tokens = 1000  # served before the job started: not the job's
    endpoint = _Endpoint(metrics.exposition())
    try:
        meter = JobMeter(12, None, metrics_url=endpoint.url, port=0, socket_path=str(agent_side.path))
        meter.start()
        meter.stopping()  # the first scrape: the baseline
        meter.feed(
            "stderr", progress_line("train", step=1, tokens=4096, elapsed_s=1.0, tokens_per_s=4096.0, loss=3.0) + "\n"
        )
        metrics.generated_tokens = 1040
        endpoint.body = metrics.exposition()
        meter.stopping()  # what the worker does right before it sends SIGTERM
        meter.finish()
    finally:
        endpoint.close()
    settle(lambda: agent_side.channel.received >= 2)
    totals = sums(agent_side.channel.ledger.drain())
    assert totals[(12, "progress")]["train"] == 4096
    assert totals[(12, "prometheus")]["generated"] == 40


def test_a_job_run_sends_its_printed_tokens_to_the_agent(
    dash: FakeDashboard, tmp_path: Path, agent_side: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(channel.SOCKET_ENV, str(agent_side.path))
    code = (
        "import sys\n"
        "for i in range(1, 4): print(f'HWPROBE_PROGRESS kind=train step={i} tokens={i * 1000} loss=2.0', flush=True)\n"
        "sys.stdout.write('HWPROBE_PROGRESS kind=train step=4 tokens=4500 final=1')\n"
    )  # no newline at the end
    spec = job_spec(argv=[sys.executable, "-c", code])
    result = run(dash, spec, tmp_path, report_port=0)
    assert result.outcome == "succeeded", dash.text()
    # Everything was delivered before the job's end was reported: no waiting here.
    entries = agent_side.channel.ledger.drain()
    assert sums(entries)[(7, "progress")]["train"] == 4500


def test_a_job_learns_where_the_agent_listens_from_its_environment(
    dash: FakeDashboard, tmp_path: Path, agent_side: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(channel.SOCKET_ENV, str(agent_side.path))
    code = (
        "import os; e = os.environ; "
        "print('at', e['HWPROBE_REPORT_PORT'], e['HWPROBE_REPORT_SOCKET'], e['HWPROBE_JOB_ID'])"
    )
    result = run(dash, job_spec(argv=[sys.executable, "-c", code]), tmp_path, report_port=8799)
    assert result.outcome == "succeeded"
    assert f"at 8799 {agent_side.path} 7" in dash.text()


def test_a_scraped_stretch_counts_its_edge_intervals_at_the_rate_inside_it() -> None:
    from hwprobe.progress import JobScrape

    metrics = Metrics()
    endpoint = _Endpoint(metrics.exposition())
    sent: list[tuple[float, float]] = []
    scrape = JobScrape(endpoint.url, "hwprobe", False, lambda d, active: sent.append((d["generated"], active)))
    try:
        scrape.scrape()  # the baseline
        for generated in (10, 110, 160, 160):  # starts late, runs, stops early, idle
            time.sleep(0.2)
            metrics.generated_tokens = generated
            endpoint.body = metrics.exposition()
            scrape.scrape()
        scrape.flush()
    finally:
        endpoint.close()
    (first, a1), (inside, a2), (last, a3) = sent
    assert (first, inside, last) == (10, 100, 50)
    # The engine worked 10 / (100 / a2) s of the first interval and 50 / (100 / a2) s of the last.
    assert a1 == pytest.approx(0.1 * a2) and a3 == pytest.approx(0.5 * a2)
