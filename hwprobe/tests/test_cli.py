"""``python -m hwprobe`` as a subprocess: sample, and run against a local sink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hwprobe.schema import SYSTEM_METRICS
from hwprobe.spool import Spool
from hwprobe.tests.conftest import Sink, free_port

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--interval", "0.2", "--send-every", "0.4", "--backoff-base", "0.1", "--backoff-cap", "0.4"]


def agent(tmp_path: Path, server: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HWPROBE_STATE_DIR": str(tmp_path), "HWPROBE_TOKEN": "tok"}
    return subprocess.Popen(
        [sys.executable, "-m", "hwprobe", "run", "--server", server, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_sample_prints_one_json_document_and_exits_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hwprobe", "sample"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert set(document) == {"inventory", "sample"}
    assert document["inventory"]["hostname"]
    assert document["inventory"]["accelerators"] == []  # no GPU here: simply absent
    sample = document["sample"]
    assert sample["count"] == 1 and sample["gpus"] == []
    assert {m.name for m in SYSTEM_METRICS} <= set(sample["system"])
    assert sample["system"]["cpu_percent"]["min"] == sample["system"]["cpu_percent"]["max"]
    assert "not applicable" in done.stderr  # the absent NVIDIA driver, said once


def test_run_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HWPROBE_")}
    done = subprocess.run(
        [sys.executable, "-m", "hwprobe", "run", "--server", "http://127.0.0.1:9"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "token" in done.stderr


def test_every_seq_arrives_once_in_order_after_the_server_was_down(tmp_path: Path) -> None:
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("secret-token\n")
    proc = agent(tmp_path, f"http://127.0.0.1:{port}", "--token-file", str(token_file), *FAST)
    sink = Sink(port=port)
    try:
        time.sleep(2.0)  # the sink is down: windows pile up in the spool
        sink.start()
        assert wait_until(lambda: len(sink.accepted_seqs()) >= 8)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.stop()
    stderr = proc.stderr.read() if proc.stderr else ""
    spool = Spool(tmp_path / "spool.sqlite3")
    seqs = sink.accepted_seqs()
    assert seqs == list(range(1, spool.last_seq + 1)), stderr
    assert len(spool) == 0
    assert sink.headers[0]["Authorization"] == "Bearer secret-token"
    assert sink.accepted[0]["inventory"]["hostname"]
    assert all(doc["inventory"] is None for doc in sink.accepted[1:])
    assert stderr.count("cannot deliver") == 1, stderr  # one line for the outage, not one per try


def test_sigterm_spools_and_sends_the_partial_window(tmp_path: Path, sink: Sink) -> None:
    proc = agent(tmp_path, sink.url, "--interval", "0.2", "--send-every", "60")
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    [sample] = [s for doc in sink.accepted for s in doc["samples"]]
    assert sample["seq"] == 1
    assert 1 <= sample["count"] < 300
    assert sample["system"]["mem_total_bytes"] > 0


def dead_letters(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HWPROBE_STATE_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "hwprobe", "dead-letters", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dead_letters_lists_the_refused_samples_with_the_servers_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")  # the agent's default spool in its state folder
    for ts in (1.0, 2.0, 3.0):
        spool.put({"ts": ts, "interval_s": 10.0, "count": 10, "system": {}, "gpus": []})
    spool.dead_letter([2], "400: samples[0].ts: not a number")
    spool.close()

    listed = dead_letters(tmp_path)
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert line.endswith("  seq 2  400: samples[0].ts: not a number")
    assert "1 sample(s) set aside" in listed.stderr

    as_json = dead_letters(tmp_path, "--json")
    [letter] = [json.loads(x) for x in as_json.stdout.splitlines()]
    assert letter["seq"] == 2 and letter["sample"]["ts"] == 2.0


def test_dead_letters_says_when_there_is_no_spool(tmp_path: Path) -> None:
    listed = dead_letters(tmp_path, "--spool", str(tmp_path / "nowhere.sqlite3"))
    assert listed.returncode == 2 and "no spool at" in listed.stderr
    assert not (tmp_path / "nowhere.sqlite3").exists(), "looking must not create one"


def test_dead_letters_requeue_puts_samples_back_in_the_queue(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    for ts in (1.0, 2.0, 3.0, 4.0):
        spool.put({"ts": ts, "interval_s": 10.0, "count": 10, "system": {}, "gpus": []})
    spool.dead_letter([2, 3], "400: samples[0].ts: is in the future: check the agent's clock")
    spool.ack([1, 4])  # delivered
    spool.close()

    one = dead_letters(tmp_path, "--requeue", "3", "7")
    assert one.returncode == 1, "seq 7 was never set aside"
    assert "no sample set aside with seq 7" in one.stderr and "1 sample(s) put back" in one.stderr

    rest = dead_letters(tmp_path, "--requeue")
    assert rest.returncode == 0 and "1 sample(s) put back" in rest.stderr and "seq 2" in rest.stderr

    spool = Spool(tmp_path / "spool.sqlite3")
    try:
        assert [s["seq"] for s in spool.peek(10)] == [2, 3], "the oldest, sent first, under their own seq"
        assert spool.peek(1)[0]["ts"] == 2.0
        assert spool.dead_letters() == [] and spool.dead == 2
    finally:
        spool.close()
    nothing = dead_letters(tmp_path, "--requeue")
    assert nothing.returncode == 0 and "no sample set aside" in nothing.stderr
