"""MFU and bandwidth efficiency of a job, against the shipped hardware catalogue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard.economics.efficiency import job_efficiency, mfu_percent
from dashboard.fleet.models import Accelerator, ThroughputSample
from dashboard.jobs.models import Job, JobAttempt

pytestmark = pytest.mark.django_db


def test_mfu_is_six_flops_per_parameter_per_token_over_the_peak():
    # 8B parameters at 10,000 tokens/s on one H100 SXM (989.4 TFLOP/s dense bf16): 48.5 %.
    assert mfu_percent(8.0, 10_000, 989.4) == pytest.approx(6 * 8e9 * 1e4 / 989.4e12 * 100)
    assert round(mfu_percent(8.0, 10_000, 989.4), 1) == 48.5
    assert mfu_percent(8.0, 10_000, 0) is None


def a_job_on_an_h200(owner, machine, kind: str, tokens: dict[str, int], **fields) -> Job:
    Accelerator.objects.create(machine=machine, index=0, vendor="nvidia", name="NVIDIA H200", uuid="GPU-0")
    now = timezone.now()
    job = Job.objects.create(
        owner=owner,
        name="j",
        kind=kind,
        argv=["x"],
        machine=machine,
        assigned_gpus=[0],
        status="running",
        attempt=1,
        started_at=now - timedelta(minutes=5),
        **fields,
    )
    JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[0], started_at=job.started_at)
    ThroughputSample.objects.create(
        machine=machine, seq=1, job_key=job.pk, source="progress", ts=now, interval_s=10.0, **tokens
    )
    return job


def test_a_training_job_with_a_stated_size_gets_its_mfu_from_the_catalogue_peak(machine, operator):
    job = a_job_on_an_h200(operator, machine, "train", {"train_tokens": 100_000}, model_params_b=8.0, precision="bf16")
    eff = job_efficiency(job)
    assert eff["peak_tflops"] == 989.5  # the H200 row of dashboard/economics/data/ai_hardware_facts.csv
    assert eff["percent"] == pytest.approx(6 * 8e9 * 10_000 / 989.5e12 * 100)
    assert eff["sources"] and "tritonbench" in eff["sources"][0]


def test_a_precision_the_catalogue_has_no_peak_for_says_so(machine, operator):
    job = a_job_on_an_h200(operator, machine, "train", {"train_tokens": 100_000}, model_params_b=8.0, precision="fp8")
    eff = job_efficiency(job)
    assert eff["percent"] is None and "none for fp8" in eff["why"]


def test_a_serving_job_is_measured_against_the_bandwidth_bound(machine, operator):
    job = a_job_on_an_h200(
        operator,
        machine,
        "serve",
        {"generated_tokens": 4_000},
        model_params_b=8.0,
        precision="fp16",
        context_tokens=4096,
    )
    eff = job_efficiency(job)
    # 4.8 TB/s over 16 GB of weights and one sequence's 0.54 GB of KV cache: 290 tokens/s.
    assert round(eff["bound_tokens_per_s"]) == 290
    assert eff["percent"] == pytest.approx(400 / eff["bound_tokens_per_s"] * 100)


def test_a_job_without_a_model_size_explains_why_there_is_no_figure(machine, operator):
    job = a_job_on_an_h200(operator, machine, "train", {"train_tokens": 1000})
    assert job_efficiency(job)["why"].startswith("the job states no model size")
