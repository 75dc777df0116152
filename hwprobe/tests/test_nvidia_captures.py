"""The replay reads `nvidia-smi -q -x` XML and refuses, clearly, outputs it cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import nvml_replay

FIXTURES = Path(__file__).parent / "fixtures"
XML = FIXTURES / "nvidia_smi_xml" / "a100-sxm4-v12.xml"
OTHER = FIXTURES / "nvidia_smi_other"
MiB = 1024 * 1024


def xml_collector() -> NvidiaCollector:
    return NvidiaCollector(nvml=nvml_replay.from_nvidia_smi_q(XML.read_text()), pid_info=lambda pid: (None, None))


def test_it_reads_an_nvidia_smi_xml_capture() -> None:
    nv = xml_collector()
    parent, *migs = nv.inventory()["accelerators"]
    assert parent["name"] == "NVIDIA A100-SXM4-80GB"
    assert parent["uuid"] == "GPU-513536b6-7d19-9063-b049-1e69664bb298"
    assert parent["driver"] == "535.54.03"
    assert parent["mem_total_bytes"] == 81920 * MiB and parent["power_limit_watts"] == 500.0
    assert [(m["gpu_instance_id"], m["compute_instance_id"]) for m in migs] == [(3, 0), (4, 0), (5, 0), (6, 0)]
    assert all(m["parent_uuid"] == parent["uuid"] for m in migs)
    gpu, *mig_samples = nv.collect()["gpus"]
    assert gpu["mem_used_bytes"] == 50 * MiB and gpu["power_watts"] == 67.03 and gpu["temp_c"] == 27
    assert (gpu["sm_clock_mhz"], gpu["mem_clock_mhz"]) == (1275, 1593)
    assert gpu["util_percent"] is None  # <gpu_util>N/A</gpu_util> with MIG on
    assert gpu["ecc_errors"] == 0 and gpu["throttle_reasons"] == 0 and gpu["processes"] == []
    assert [m["mem_used_bytes"] for m in mig_samples] == [12 * MiB] * 4
    assert [m["ecc_errors"] for m in mig_samples] == [0] * 4


def test_it_tells_text_captures_from_xml_ones() -> None:
    text = nvml_replay.capture_kind("==============NVSMI LOG==============\n\nAttached GPUs : 0\n")
    assert (text, nvml_replay.capture_kind(XML.read_text())) == ("q", "xml")


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("linux-x86_64__nvidia-h200__590.48.01__query_gpu_idle.csv", "--query-gpu` CSV"),
        ("linux-x86_64__nvidia-h200__590.48.01__query_compute_apps_load.csv", "--query-gpu` CSV"),
        ("linux-x86_64__nvidia-h200__590.48.01__nvidia_smi_table_load.txt", "default `nvidia-smi` table"),
    ],
)
def test_an_output_it_cannot_read_is_an_error_not_a_host_without_gpus(name: str, says: str) -> None:
    with pytest.raises(nvml_replay.CaptureFormatError, match="nvidia-smi -q") as caught:
        nvml_replay.from_nvidia_smi_q((OTHER / name).read_text())
    assert says in str(caught.value)


def test_an_empty_or_foreign_file_is_an_error_too() -> None:
    with pytest.raises(nvml_replay.CaptureFormatError, match="empty"):
        nvml_replay.from_nvidia_smi_q("\n")
    with pytest.raises(nvml_replay.CaptureFormatError, match="neither"):
        nvml_replay.from_nvidia_smi_q("GPU 0: NVIDIA H200 (UUID: GPU-0)\n")
    with pytest.raises(nvml_replay.CaptureFormatError, match="does not parse"):
        nvml_replay.from_nvidia_smi_q("<?xml version='1.0'?><nvidia_smi_log><gpu>")
