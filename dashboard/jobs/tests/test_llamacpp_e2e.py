"""A real serving engine end to end: llama.cpp's `llama-server`, built from source, serving a tiny
random-weight model as a job through a host template, scraped through its real ``/metrics``.

The tokens stored for the job must equal what the server itself counted
(``llamacpp:tokens_predicted_total``, ``llamacpp:prompt_tokens_total``), read just before the job
is cancelled: the worker scrapes once more right before it stops the engine.

Cost: the first run on a machine builds llama-server (``bench/build_llama_server.py``: about
6 minutes of two cores, 375 s measured at -O1; ~1 GB of scratch space, a 76 MB download) and caches the
binary in ``~/.cache/hwdash/llama-server-<version>/``; later runs take about a minute.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bench.build_llama_server import build, write_tiny_model
from dashboard.fleet.tests.test_agent_end_to_end import free_port, wait_for
from dashboard.jobs import service
from dashboard.jobs import throughput as job_throughput
from dashboard.jobs.models import Job
from dashboard.jobs.tests.test_throughput_e2e import Fleet, fleet  # noqa: F401 - the fixture
from dashboard.jobs.tests.test_worker_e2e import settle, submit
from hwprobe.engines.prometheus import parse_sample

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)]

COUNTERS = (
    "llamacpp:tokens_predicted_total",
    "llamacpp:prompt_tokens_total",
    "llamacpp:tokens_predicted_seconds_total",
)


def post_json(url: str, body: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        return json.loads(reply.read())


def counters(base: str) -> dict[str, float]:
    """The server's own token counters from its /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(COUNTERS):
            name, value = parse_sample(line)
            out[name] = out.get(name, 0.0) + value
    return out


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


class LlamaJob:
    """llama-server as a serving job on ``fleet``'s machine: allowed by a host template, its
    ``/metrics`` the job's metrics_url."""

    def __init__(self, on: Fleet, user: Any, model: Path, binary: Path) -> None:
        self.fleet, self.user = on, user
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        on.allow(f'\n[[allow]]\nname = "llama-server"\nargv = ["{binary}", "-m", "*.gguf", "--metrics", "**"]\n')
        argv = [str(binary), "-m", str(model), "--metrics", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["-c", "512", "-t", "1", "-np", "1"]
        self.job = submit(user, argv, name="llama.cpp", kind="serve", metrics_url=f"{self.base}/metrics")
        wait_for(lambda: healthy(self.base), 120, "llama-server to answer /health")

    def load(self, seconds: float, n_predict: int = 32) -> dict[str, float]:
        """Back-to-back completions for ``seconds``: what the replies counted and how long it took."""
        started = time.monotonic()
        replies = predicted = evaluated = 0
        while time.monotonic() - started < seconds:
            reply = post_json(
                f"{self.base}/completion",
                {"prompt": f"hello number {replies} once more", "n_predict": n_predict, "cache_prompt": False},
            )
            replies += 1
            predicted += reply.get("tokens_predicted", 0)
            evaluated += reply.get("tokens_evaluated", 0)
        return {
            "requests": replies,
            "predicted": predicted,
            "evaluated": evaluated,
            "seconds": time.monotonic() - started,
        }

    def cancel(self) -> Job:
        service.cancel(self.user, Job.objects.get(pk=self.job.pk))
        return settle(self.job, self.fleet.worker, 60)


@pytest.fixture(scope="module")
def llama_server() -> Path:
    return build()  # cached after the first build (about 6 minutes of two cores)


def test_the_tokens_stored_for_a_llama_cpp_job_equal_the_servers_own_counters(
    fleet,  # noqa: F811 - the fixture imported above
    operator,
    llama_server,
    tmp_path,
):
    model = write_tiny_model(tmp_path / "tiny.gguf")
    served = LlamaJob(fleet, operator, model, llama_server)
    replies = served.load(seconds=5)
    own = counters(served.base)
    assert own["llamacpp:tokens_predicted_total"] == replies["predicted"] > 0
    job = served.cancel()
    assert job.status == "cancelled", fleet.worker.output()

    summary = job_throughput.job_summary(job)
    assert summary["generated"]["total_tokens"] == own["llamacpp:tokens_predicted_total"]
    assert summary["prompt"]["total_tokens"] == own["llamacpp:prompt_tokens_total"]
    assert set(job_throughput.rows_of([job.pk]).values_list("source", flat=True)) == {"prometheus"}
