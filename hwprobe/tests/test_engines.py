"""Serving engines' token counters, read from real captures through the live-endpoint code."""

from __future__ import annotations

import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hwprobe.engines import ollama, prometheus
from hwprobe.engines.prometheus import CounterRate, Target, parse
from hwprobe.tests.conftest import FIXTURES
from hwprobe.workloads.serve import Metrics

LLM = FIXTURES / "llm_metrics"
OLLAMA = FIXTURES / "ollama"
EXPOSITIONS = sorted(LLM.rglob("*.txt"))


def text(relative: str) -> str:
    return (LLM / relative).read_text()


# ---- parsing every capture -----------------------------------------------------------------


@pytest.mark.parametrize("path", EXPOSITIONS, ids=lambda p: p.name)
def test_every_capture_parses_and_is_recognised_as_its_engine(path: Path) -> None:
    reading = parse(path.read_text())
    assert reading.engine == path.parent.name
    for value in reading.totals.values():
        assert value is None or (math.isfinite(value) and value >= 0)


def test_vllm_sums_its_prompt_and_generation_counters() -> None:
    reading = parse(text("vllm/datadog_vllm_metrics.txt"))
    assert reading.engine == "vllm"
    assert reading.totals == {"prompt": 5.0, "generated": 7.0}
    assert reading.problems == []


def test_llamacpp_reads_prompt_tokens_and_tokens_predicted() -> None:
    reading = parse(text("llamacpp/issue_ggml-org_llama.cpp_pr13196_vulkan_excerpt.txt"))
    assert reading.totals == {"prompt": 143.0, "generated": 673.0}


def test_llamacpp_right_after_start_reads_zeros_despite_a_nan_elsewhere() -> None:
    reading = parse(text("llamacpp/issue_ggml-org_llama.cpp_pr11915_before_excerpt.txt"))
    assert reading.totals == {"prompt": 0.0, "generated": 0.0}
    assert reading.problems == []  # the -nan is in a metric we do not read


def test_llamacpp_token_counters_are_the_ones_the_names_table_lists_as_counters() -> None:
    table = (LLM / "llamacpp" / "METRICS_NAMES_llamacpp.md").read_text()
    for name in prometheus.ENGINES["llamacpp"].values():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}`"))
        assert "| counter |" in row


def test_sglang_sums_over_the_model_name_label() -> None:
    reading = parse(text("sglang/sglang_docs_production_metrics_example.txt"))
    assert reading.engine == "sglang"
    assert reading.totals == {"prompt": 8_128_902.0, "generated": 7_557_572.0}


def test_tgi_reads_the_sums_of_its_token_histograms() -> None:
    reading = parse(text("tgi/datadog_tgi_payload_token_histograms_excerpt.txt"))
    assert reading.engine == "tgi"
    assert reading.totals == {"prompt": 662.0, "generated": 3423.0}


def test_tgi_without_its_token_histograms_says_what_is_missing() -> None:
    reading = parse(text("tgi/datadog_tgi_payload_head_excerpt.txt"))
    assert reading.engine == "tgi"
    assert reading.totals == {"prompt": None, "generated": None}
    assert any("tgi_request_generated_tokens_sum is missing" in p for p in reading.problems)


def test_tgi_token_histograms_are_the_ones_its_reference_table_names() -> None:
    table = (LLM / "tgi" / "tgi_docs_metrics_reference.md").read_text()
    for family in ("tgi_request_input_length", "tgi_request_generated_tokens"):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{family}`"))
        assert "Histogram" in row and "Count" in row
    assert {v.removesuffix("_sum") for v in prometheus.ENGINES["tgi"].values()} == {
        "tgi_request_input_length",
        "tgi_request_generated_tokens",
    }


def test_the_built_in_serve_workload_exposition_is_read() -> None:
    metrics = Metrics()
    metrics.prompt_tokens, metrics.generated_tokens = 120, 96
    reading = parse(metrics.exposition())
    assert (reading.engine, reading.totals) == ("hwprobe", {"prompt": 120.0, "generated": 96.0})


def test_a_named_engine_overrides_detection_and_an_unknown_text_is_reported() -> None:
    assert parse(text("sglang/sglang_docs_production_metrics_example.txt"), "vllm").totals == {
        "prompt": None,
        "generated": None,
    }
    reading = parse("# nothing here\nsomething_else_total 3\n")
    assert reading.engine is None and reading.problems == ["no known engine's metrics found"]


def test_a_nan_token_counter_is_skipped_and_the_other_kind_kept() -> None:
    capture = text("llamacpp/issue_ggml-org_llama.cpp_pr13196_vulkan_excerpt.txt")
    broken = capture.replace("llamacpp:prompt_tokens_total 143", "llamacpp:prompt_tokens_total -nan")
    reading = parse(broken)
    assert reading.totals == {"prompt": None, "generated": 673.0}
    assert any("not a finite count" in p for p in reading.problems)


def test_a_malformed_line_elsewhere_costs_nothing() -> None:
    capture = text("sglang/sglang_docs_production_metrics_example.txt")
    broken = capture.replace(
        "# HELP sglang:token_usage", 'sglang:token_usage{model_name="x" oops\n# HELP sglang:token_usage'
    )
    reading = parse(broken)
    assert reading.totals == {"prompt": 8_128_902.0, "generated": 7_557_572.0}
    assert reading.problems == []


@pytest.mark.parametrize("path", EXPOSITIONS, ids=lambda p: p.name)
def test_our_sample_parser_agrees_with_prometheus_client_on_every_capture(path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    theirs = [(s.name, s.value) for f in text_string_to_metric_families(path.read_text()) for s in f.samples]
    ours = [
        prometheus.parse_sample(line.strip())
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(ours) == len(theirs)
    for (name, value), (their_name, their_value) in zip(ours, theirs, strict=True):
        # prometheus_client renames a counter sample without _total (llama.cpp's
        # n_busy_slots_per_decode) to name_total; we keep the name as written.
        assert their_name in (name, name + "_total")
        assert value == their_value or (math.isnan(value) and math.isnan(their_value))


def test_label_values_with_braces_spaces_and_escaped_quotes_are_skipped_whole() -> None:
    line = 'vllm:generation_tokens_total{model_name="a} 9 \\"b\\" {c}",engine="0"} 1.5e3 1700000000000'
    assert prometheus.parse_sample(line) == ("vllm:generation_tokens_total", 1500.0)
    for bad in ('x{a="1" 3', "x", "x{} ", "9x 1"):
        with pytest.raises(ValueError):
            prometheus.parse_sample(bad)


def test_a_malformed_token_line_is_skipped_and_the_other_read() -> None:
    capture = text("vllm/datadog_vllm_metrics.txt")
    broken = capture.replace(
        'vllm:prompt_tokens_total{model_name="facebook/opt-125m"} 5.0',
        'vllm:prompt_tokens_total{model_name="facebook/opt-125m"} five',
    )
    reading = parse(broken)
    assert reading.totals == {"prompt": None, "generated": 7.0}
    assert any("skipped a malformed line" in p for p in reading.problems)


# ---- rates across scrapes, resets and restarts ----------------------------------------------


def test_the_first_scrape_only_sets_the_baseline() -> None:
    rate = CounterRate()
    assert rate.update({"prompt": 1000.0, "generated": 500.0}) == {}
    assert rate.update({"prompt": 1100.0, "generated": 560.0}) == {"prompt": 100.0, "generated": 60.0}
    assert rate.update({"prompt": 1100.0, "generated": 560.0}) == {}


def test_counters_that_started_with_the_job_count_from_zero() -> None:
    assert CounterRate(from_zero=True).update({"prompt": 40.0, "generated": 32.0}) == {
        "prompt": 40.0,
        "generated": 32.0,
    }


def test_a_counter_reset_counts_the_new_total_as_produced_since() -> None:
    rate = CounterRate()
    rate.update({"prompt": 5000.0, "generated": 4000.0})
    assert rate.update({"prompt": 30.0, "generated": 20.0}) == {"prompt": 30.0, "generated": 20.0}
    assert rate.update({"prompt": 50.0, "generated": 45.0}) == {"prompt": 20.0, "generated": 25.0}


def test_an_engine_restart_is_seen_by_its_start_time_even_when_totals_grew() -> None:
    rate = CounterRate()
    rate.update({"prompt": 100.0, "generated": 100.0}, start_time=1_700_000_000.0)
    # Restarted and already past the old totals by the next scrape: a decrease cannot show it.
    assert rate.update({"prompt": 150.0, "generated": 120.0}, start_time=1_700_000_050.0) == {
        "prompt": 150.0,
        "generated": 120.0,
    }
    assert rate.update({"prompt": 160.0, "generated": 125.0}, start_time=1_700_000_050.0) == {
        "prompt": 10.0,
        "generated": 5.0,
    }


def test_a_missing_kind_keeps_its_last_total_and_loses_nothing_later() -> None:
    rate = CounterRate()
    rate.update({"prompt": 10.0, "generated": 10.0})
    assert rate.update({"prompt": None, "generated": 15.0}) == {"generated": 5.0}
    assert rate.update({"prompt": 18.0, "generated": 15.0}) == {"prompt": 8.0}


def test_a_target_across_real_llamacpp_captures_a_restart_and_a_broken_scrape(caplog: Any) -> None:
    before = text("llamacpp/issue_ggml-org_llama.cpp_pr11915_before_excerpt.txt")
    busy = text("llamacpp/issue_ggml-org_llama.cpp_pr13196_vulkan_excerpt.txt")
    target = Target("http://127.0.0.1:1/metrics", job=3)
    caplog.set_level(logging.WARNING, "hwprobe")
    assert target.read(before) == {}
    assert target.read(busy) == {"prompt": 143.0, "generated": 673.0}
    assert target.read(before) == {}  # restarted: back to zero, nothing produced yet
    assert target.read(busy) == {"prompt": 143.0, "generated": 673.0}
    broken = busy.replace("llamacpp:tokens_predicted_total 673", "llamacpp:tokens_predicted_total -nan")
    assert target.read(broken) == {}
    assert target.read(broken) == {}
    warnings = [r.getMessage() for r in caplog.records if "not a finite count" in r.getMessage()]
    assert len(warnings) == 1  # said once, not once a scrape


class _Endpoint:
    """A live /metrics endpoint whose body the test changes."""

    def __init__(self, body: str) -> None:
        self.body = body
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                raw = endpoint.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_live_endpoint_is_scraped_through_the_same_parser() -> None:
    endpoint = _Endpoint(text("vllm/datadog_vllm_metrics.txt"))
    try:
        target = Target(endpoint.url, engine="vllm")
        assert target.scrape(2.0) == {}
        endpoint.body = endpoint.body.replace(
            'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 7.0',
            'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 19.0',
        )
        assert target.scrape(2.0) == {"generated": 12.0}
    finally:
        endpoint.close()
    assert target.scrape(0.5) == {} and target.failing


def test_scrape_targets_parse_an_engine_suffix() -> None:
    assert prometheus.parse_target("http://h:8000/metrics=vllm") == ("http://h:8000/metrics", "vllm")
    assert prometheus.parse_target("http://h:8000/metrics?a=b") == ("http://h:8000/metrics?a=b", "auto")
    with pytest.raises(ValueError):
        Target("http://h/metrics", engine="nope")


# ---- Ollama ---------------------------------------------------------------------------------


def ollama_reply(name: str) -> dict[str, Any]:
    raw = (OLLAMA / name).read_text()
    if name.endswith(".json5"):
        raw = raw.replace("[...]", "[]")  # the docs elide the context array: the rest is JSON
    return json.loads(raw)


OLLAMA_FILES = sorted(p.name for p in OLLAMA.iterdir())


@pytest.mark.parametrize("name", OLLAMA_FILES)
def test_every_ollama_reply_parses(name: str) -> None:
    reply = ollama_reply(name)
    counts = ollama.parse_response(reply)
    if "eval_count" in reply or "prompt_eval_count" in reply:
        assert counts is not None
        assert counts.generated_tokens == reply.get("eval_count", 0)
        assert counts.prompt_tokens == reply.get("prompt_eval_count", 0)
    else:
        assert counts is None  # /api/ps, /api/tags: no tokens


def test_ollama_speeds_are_counts_over_durations_in_nanoseconds() -> None:
    counts = ollama.parse_response(ollama_reply("generate_no_streaming.json"))
    assert counts is not None
    assert (counts.prompt_tokens, counts.generated_tokens) == (26, 290)
    assert counts.generated_tokens_per_s == pytest.approx(290 / 4.709213)
    assert counts.prompt_tokens_per_s == pytest.approx(26 / 0.325953)


def test_an_ollama_embedding_counts_prompt_tokens_without_a_speed() -> None:
    counts = ollama.parse_response(ollama_reply("embed_response.json"))
    assert counts == ollama.OllamaCounts(8, 0, None, None)
