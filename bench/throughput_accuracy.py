"""How exact are the token figures? Four jobs through the whole path, each source against itself.

A real server (gunicorn), agent (10 s windows, its UDP report port taken by another process) and
machine worker run on a throwaway database; four jobs run one after the other:

* the built-in ``train`` (progress lines),
* the built-in ``serve`` under load, scraped through its ``/metrics``,
* a script calling ``hwprobe.report.tokens`` (a job through a ``python -c`` host template),
* a real llama.cpp ``llama-server`` serving a tiny random-weight model (a host template; built
  and cached on first use, about 9 minutes of two cores), loaded with back-to-back completions,
  then cancelled.

For each it prints the tokens the source counted, the tokens stored, the tokens shown (the job
API's summary, which the job page renders), how long after the job showed "ended" its totals were
final, and the mean rate shown against tokens ÷ the source's own active time.

    .venv/bin/python bench/throughput_accuracy.py              # about 3 min once llama-server is built
    .venv/bin/python bench/throughput_accuracy.py --seconds 10 --no-llama
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, bench_database, bench_env, say, setup_django

TARGETS = "totals equal (progress, report) or within 0.5 % (scraped); mean rate within 2 %; final within 2 s"


def final_fields(text: str) -> dict[str, float]:
    line = next(x for x in text.splitlines() if x.startswith("HWPROBE_PROGRESS") and "final=1" in x)
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)(?=\s|$)", line)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=30, help="length of the train, serve and report jobs")
    parser.add_argument("--llama-seconds", type=int, default=20, help="seconds of load on llama-server")
    parser.add_argument("--no-llama", action="store_true", help="skip the llama.cpp job")
    parser.add_argument("--database", default="hwdash_bench_throughput")
    args = parser.parse_args()

    llama_binary = None
    if not args.no_llama:
        from build_llama_server import build

        started = time.monotonic()
        llama_binary = build(log=say)
        say(f"llama-server: {llama_binary} ({time.monotonic() - started:.0f} s to find or build it)")

    with bench_database(args.database) as url, tempfile.TemporaryDirectory(prefix="hwdash-bench-") as scratch:
        setup_django(url)
        sys.path.insert(0, str(ROOT))
        return run(args, url, Path(scratch), llama_binary)


def run(args: argparse.Namespace, url: str, tmp: Path, llama_binary: Path | None) -> int:
    from django.contrib.auth.models import Group, User
    from django.test import Client

    from conftest import make_batch
    from dashboard.fleet.ingest import store_batch
    from dashboard.fleet.models import Machine, ThroughputSample
    from dashboard.fleet.payload import Batch
    from dashboard.jobs import service
    from dashboard.jobs.models import Job
    from dashboard.jobs.tests.test_throughput_e2e import Fleet
    from dashboard.jobs.tests.test_worker_e2e import PY, log_text, submit

    user = User.objects.create_user("bench", password="bench-pass-1234")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    machine = Machine.objects.create(name="bench-01")
    store_batch(machine, Batch.model_validate(make_batch([1], gpus=0)))
    fleet = Fleet(bench_env(url, DEBUG="1"), machine, tmp)
    client = Client()
    client.force_login(user)
    kinds = {"train": "train_tokens", "generated": "generated_tokens", "prompt": "prompt_tokens"}

    def stored(job: Job) -> dict[str, int]:
        rows = ThroughputSample.objects.filter(job_key=job.pk, machine=machine)
        return {k: sum(rows.values_list(column, flat=True)) for k, column in kinds.items()}

    def finish(job: Job, expected_of: Any, timeout_s: float = 120) -> dict[str, Any]:
        """Wait for the job to show it ended, take its stored totals at once, then (if they fall
        short of ``expected_of(job)``) wait for them: the lag is 0 when they were already final."""
        deadline = time.monotonic() + timeout_s
        while not Job.objects.get(pk=job.pk).is_finished:
            if time.monotonic() > deadline:
                raise SystemExit(f"job #{job.pk} did not end; worker:\n{fleet.worker.output()[-3000:]}")
            time.sleep(0.05)
        shown_ended = time.monotonic()
        at_end = stored(job)
        expected = expected_of(job)
        lag: float | None = 0.0
        if any(at_end[k] < v for k, v in expected.items()):
            lag = None
            while time.monotonic() - shown_ended < 30:
                if all(stored(job)[k] >= v for k, v in expected.items()):
                    lag = time.monotonic() - shown_ended
                    break
                time.sleep(0.1)
        shown = client.get(f"/api/v1/jobs/{job.pk}").json()["throughput"]
        return {"expected": expected, "stored": stored(job), "shown": shown, "lag_s": lag}

    rows: list[dict[str, Any]] = []

    def record(name: str, kind: str, source: float, result: dict[str, Any], source_rate: float, note: str) -> None:
        shown = result["shown"][kind]
        rows.append(
            {
                "name": name,
                "kind": kind,
                "source": source,
                "stored": result["stored"][kind],
                "shown": shown["total_tokens"],
                "lag_s": result["lag_s"],
                "mean": shown["mean_tokens_per_s"],
                "active_s": shown["active_s"],
                "source_rate": source_rate,
                "note": note,
            }
        )

    try:
        s = args.seconds
        say(f"train: built-in, {s} s")
        job = submit(user, ["python", "-m", "hwprobe.workloads", "train", "--seconds", str(s)], name="train")
        result = finish(job, lambda j: {"train": final_fields(log_text(j))["tokens"]})
        f = final_fields(log_text(job))
        record(
            "built-in train (progress lines)", "train", f["tokens"], result, f["tokens_per_s"], "workload's own clock"
        )

        say(f"serve: built-in, --load 2, {s} s, scraped through /metrics")
        argv = ["python", "-m", "hwprobe.workloads", "serve", "--port", "0", "--load", "2", "--seconds", str(s)]
        job = submit(user, argv, name="serve", kind="serve")
        serve_totals = lambda j: {  # noqa: E731
            "generated": final_fields(log_text(j))["generated_tokens"],
            "prompt": final_fields(log_text(j))["prompt_tokens"],
        }
        result = finish(job, serve_totals)
        f = final_fields(log_text(job))
        rate = f["generated_tokens"] / f["elapsed_s"]
        record("built-in serve (/metrics)", "generated", f["generated_tokens"], result, rate, "generated / elapsed_s")
        record(
            "built-in serve (/metrics)", "prompt", f["prompt_tokens"], result, f["prompt_tokens"] / f["elapsed_s"], ""
        )

        say(f"report: a script calling report.tokens(512) every 10 ms for {s} s")
        script = (
            f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
            "from hwprobe import report\n"
            f"start = time.monotonic(); n = 0\nwhile time.monotonic() - start < {s}:\n"
            "    time.sleep(0.01); report.tokens(512); n += 512\n"
            "print(f'REPORTED tokens={n} active_s={time.monotonic() - start:.3f}')\n"
        )
        job = submit(user, [PY, "-c", script], name="report")
        reported = lambda j: {"train": float(re.search(r"REPORTED tokens=(\d+)", log_text(j)).group(1))}  # noqa: E731
        result = finish(job, reported)
        total = result["expected"]["train"]
        active = float(re.search(r"REPORTED tokens=\d+ active_s=([0-9.]+)", log_text(job)).group(1))
        record("script with report.tokens", "train", total, result, total / active, "tokens / the loop's time")

        if llama_binary is not None:
            from bench.build_llama_server import write_tiny_model
            from dashboard.jobs.tests.test_llamacpp_e2e import LlamaJob, counters

            say(f"llama.cpp: llama-server with a tiny random model, {args.llama_seconds} s of completions")
            served = LlamaJob(fleet, user, write_tiny_model(tmp / "tiny.gguf"), llama_binary)
            load = served.load(args.llama_seconds)
            own = counters(served.base)
            service.cancel(user, Job.objects.get(pk=served.job.pk))
            generated = own["llamacpp:tokens_predicted_total"]
            prompt = own["llamacpp:prompt_tokens_total"]
            result = finish(served.job, lambda _: {"generated": generated, "prompt": prompt})
            busy = own.get("llamacpp:tokens_predicted_seconds_total")
            note = f"client's load time; the server's own decode time gives {generated / busy:.0f}/s" if busy else ""
            record(
                "llama.cpp llama-server (/metrics)", "generated", generated, result, generated / load["seconds"], note
            )
            record("llama.cpp llama-server (/metrics)", "prompt", prompt, result, prompt / load["seconds"], "")
        squatted = "cannot listen on udp" in fleet.agent.log.read_text()
    finally:
        fleet.stop()

    print()
    print(f"Agent windows of 10 s; its UDP report port held by another process: {'yes' if squatted else 'NO'}.")
    print(f"Targets: {TARGETS}.")
    print()
    print(
        "| job | kind | counted by the source | stored | shown | final after shown ended | "
        "mean shown | tokens ÷ source's active time | diff | active s shown |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lag = "not final within 30 s" if r["lag_s"] is None else f"{r['lag_s']:.1f} s"
        diff = (r["mean"] / r["source_rate"] - 1) * 100 if (r["mean"] and r["source_rate"]) else None
        print(
            f"| {r['name']} | {r['kind']} | {r['source']:,.0f} | {r['stored']:,} | {r['shown']:,} | {lag} | "
            f"{r['mean'] or 0:,.0f}/s | {r['source_rate']:,.0f}/s ({r['note'] or 'same'}) | "
            f"{'' if diff is None else f'{diff:+.2f} %'} | {r['active_s']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
