"""Check hwprobe against nvidia-smi on a real NVIDIA GPU, idle and under a PyTorch load.

Run from the repository root on a GPU host (Python with torch, psutil, nvidia-ml-py):

    python3 bench/gpu_check.py --out DIR --seconds 40

Then the GPM check: for each of three loads (bf16 8192² matmuls, 1 GiB device-to-device copies,
64×64 matmuls) it reads the agent's GPM metrics on cuda:0 and compares them with what the load
must show (tensor load: tensor util > 80 %; copy loop: DRAM bandwidth util > 70 %; tiny kernels:
reported only), writing nvml_gpm_<load>.json recordings (replayable, the shape of
hwprobe/tests/fixtures/gpm/). On a GPU without GPM (before Hopper) it says so and skips.

Writes (7 files + 3 GPM recordings): nvml_idle.json and nvml_load.json (hwprobe.testing.nvml_replay.record(), replayable with
nvml_replay.from_recording), sample_idle.json (``python -m hwprobe sample``), compare.txt (the
PASS/FAIL table), nvidia_smi_q_idle.txt and nvidia_smi_q_load.txt (``nvidia-smi -q``),
windows_load.jsonl (one 10 s window per line from the real collectors + aggregation while a
bf16 matmul load runs). Every step that fails says why and the script goes on; on a machine
without an NVIDIA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024
QUERY = (
    "index,uuid,name,memory.total,memory.used,power.draw,power.limit,temperature.gpu,"
    "utilization.gpu,utilization.memory,clocks.sm,clocks.mem,clocks_event_reasons.active,"
    "ecc.errors.corrected.volatile.total,ecc.errors.uncorrected.volatile.total"
)

LOAD_SCRIPT = r"""
import sys, time, torch
n, seconds = 8192, float(sys.argv[1])
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
c = a @ b
torch.cuda.synchronize()
print("ready", flush=True)
start = last = time.time()
done = since = 0
while time.time() - start < seconds:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize()
    done += 20
    since += 20
    now = time.time()
    if now - last >= 5:
        print(f"load: {2 * n**3 * since / (now - last) / 1e12:.1f} TFLOP/s bf16", flush=True)
        last, since = now, 0
elapsed = time.time() - start
print(f"load: done, {done} matmuls of {n}, mean {2 * n**3 * done / elapsed / 1e12:.1f} TFLOP/s bf16", flush=True)
"""

# One GPU load per GPM check: what it runs, and the metric it must push over a floor (None: report only).
GPM_LOADS = {
    "matmul_bf16": (
        "a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16); b = a.clone()\ndef step():\n    a @ b",
        "tensor_util_percent",
        80.0,
    ),
    "copy_1gib": (
        "a = torch.empty(2**29, device='cuda', dtype=torch.float16)\ndef step():\n    a.clone()",
        "dram_bw_util_percent",
        70.0,
    ),
    "tiny_matmul": ("a = torch.randn(64, 64, device='cuda')\ndef step():\n    a @ a", None, None),
}
GPM_SCRIPT = r"""
import sys, time, torch
{setup}
step(); torch.cuda.synchronize()
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        step()
    torch.cuda.synchronize()
"""

lines_out: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines_out.append(text)


def step(name: str, fn: Callable[[], Any]) -> Any:
    """Run one step; on failure print why and return None so the next step still runs."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - this script must reach its end
        say(f"step '{name}' failed: {type(err).__name__}: {err}")
        traceback.print_exc()
        return None


def nvidia_smi(*args: str, timeout: float = 30) -> str:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=timeout, check=True).stdout


def number(text: str) -> float | None:
    text = text.strip()
    if not text or text.startswith("[") or text in ("N/A", "Not Supported"):
        return None
    try:
        return float(int(text, 16)) if text.startswith("0x") else float(text)
    except ValueError:
        return None


def stat(value: Any) -> Any:
    """The mean of a {min, mean, max} gauge, or the value itself."""
    return value.get("mean") if isinstance(value, dict) else value


def compare(smi_csv: str, document: dict[str, Any]) -> tuple[int, int]:
    """Print one row per field; returns (passed, failed)."""
    inventory = {a["uuid"]: a for a in document["inventory"]["accelerators"]}
    gpus = {g["uuid"]: g for g in document["sample"]["gpus"]}
    passed = failed = 0
    say(f"{'gpu':>3} {'field':<40} {'nvidia-smi':>22} {'hwprobe':>22}  verdict")
    for row in smi_csv.strip().splitlines():
        cells = [c.strip() for c in row.split(",")]
        if len(cells) != 15:
            say(f"unexpected nvidia-smi row: {row}")
            failed += 1
            continue
        (
            index,
            uuid,
            name,
            mem_total,
            mem_used,
            power,
            limit,
            temp,
            util,
            mem_util,
            sm,
            mem_clock,
            reasons,
            ecc_c,
            ecc_u,
        ) = cells
        inv, gpu = inventory.get(uuid), gpus.get(uuid)
        if inv is None or gpu is None:
            say(f"{index:>3} GPU {uuid} is missing from hwprobe's output  FAIL")
            failed += 1
            continue
        ecc = None if number(ecc_c) is None or number(ecc_u) is None else number(ecc_c) + number(ecc_u)

        def mib(v: Any) -> Any:
            return None if v is None else v / MiB

        checks = [
            # field, nvidia-smi value, hwprobe value, absolute tolerance, relative tolerance
            ("index", float(index), inv["index"], 0, 0),
            ("uuid", uuid, inv["uuid"], None, None),
            ("name", name, inv["name"], None, None),
            ("memory.total [MiB] (static)", number(mem_total), mib(inv["mem_total_bytes"]), 0, 0),
            ("memory.used [MiB]", number(mem_used), mib(stat(gpu["mem_used_bytes"])), 64, 0),
            ("power.draw [W]", number(power), stat(gpu["power_watts"]), 15, 0.15),
            ("power.limit [W] (static)", number(limit), inv["power_limit_watts"], 0.01, 0),
            ("temperature.gpu [C]", number(temp), stat(gpu["temp_c"]), 3, 0),
            ("utilization.gpu [%]", number(util), stat(gpu["util_percent"]), 15, 0),
            ("utilization.memory [%]", number(mem_util), stat(gpu["mem_util_percent"]), 15, 0),
            ("clocks.sm [MHz]", number(sm), stat(gpu["sm_clock_mhz"]), 150, 0.3),
            ("clocks.mem [MHz]", number(mem_clock), stat(gpu["mem_clock_mhz"]), 50, 0.05),
            ("clocks_event_reasons.active (moving)", number(reasons), gpu["throttle_reasons"], None, "soft"),
            ("ecc volatile corrected+uncorrected", ecc, gpu["ecc_errors"], 0, 0),
        ]
        for field, smi, ours, abs_tol, rel_tol in checks:
            if abs_tol is None and rel_tol is None or rel_tol == "soft":
                ok = smi == ours or (isinstance(smi, float) and ours is not None and smi == float(ours))
                verdict = "PASS" if ok else ("DIFF (moving, not counted)" if rel_tol == "soft" else "FAIL")
            elif smi is None or ours is None:
                ok = smi is None and ours is None
                verdict = "PASS (both N/A)" if ok else "FAIL"
            else:
                tolerance = max(abs_tol, rel_tol * abs(smi))
                ok = abs(float(ours) - smi) <= tolerance
                verdict = "PASS" if ok else f"FAIL (tolerance {tolerance:g})"
            if verdict.startswith("PASS"):
                passed += 1
            elif verdict.startswith("FAIL"):
                failed += 1
            say(f"{index:>3} {field:<40} {str(smi):>22} {str(ours):>22}  {verdict}")
    return passed, failed


def agent_loop(seconds: float, out: Path, during: Callable[[], None]) -> list[dict[str, Any]]:
    """The agent's own sampling: collectors + aggregation at 1 s, a window every 10 s."""
    from hwprobe.aggregate import Window
    from hwprobe.collectors import build_probe

    probe = build_probe()
    probe.inventory()
    windows: list[dict[str, Any]] = []
    origin = time.monotonic()
    window = Window(time.time())
    tick = 0
    with open(out / "windows_load.jsonl", "w") as fh:
        while time.monotonic() - origin < seconds:
            window.add(probe.collect())
            tick += 1
            if tick == max(3, int(seconds / 2)):
                during()
            if window.count >= 10:
                sample = window.close(time.time())
                windows.append(sample)
                fh.write(json.dumps(sample) + "\n")
                fh.flush()
                window = Window(time.time())
            time.sleep(max(0.0, origin + tick - time.monotonic()))
        if window.count:
            sample = window.close(time.time())
            windows.append(sample)
            fh.write(json.dumps(sample) + "\n")
    probe.close()
    return windows


def gpm_check(out: Path) -> tuple[int, int]:
    """Run each GPM load on cuda:0 and compare the agent's GPM metrics with it; (passed, failed)."""
    from hwprobe.collectors.nvidia import NvidiaCollector
    from hwprobe.testing import nvml_replay

    nv = NvidiaCollector()
    try:
        if not nv.inventory()["accelerators"][0]["gpm_supported"]:
            say("GPU 0 has no GPM (NVML GPM needs Hopper or later, and a recent driver): GPM check skipped")
            return 0, 0
        passed = failed = 0
        say(f"{'load':<12} {'NVML util':>9} {'SM':>6} {'occup.':>6} {'tensor':>6} {'DRAM':>6}  check")
        for load, (setup, metric, floor) in GPM_LOADS.items():
            proc = subprocess.Popen(
                [sys.executable, "-c", GPM_SCRIPT.replace("{setup}", setup), "8"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            ready = proc.stdout.readline().strip() if proc.stdout else ""
            if ready != "ready":
                say(f"{load}: the load did not start: {ready} {(proc.stdout.read() if proc.stdout else '')[-400:]}")
                proc.kill()
                failed += 1
                continue
            time.sleep(1.0)
            nv.collect()
            time.sleep(1.0)  # the GPM metrics span this second
            gpu = nv.collect()["gpus"][0]
            (out / f"nvml_gpm_{load}.json").write_text(json.dumps(nvml_replay.record(note=f"gpm {load}"), indent=1))
            proc.wait(timeout=30)
            cells = [
                gpu[m]
                for m in (
                    "util_percent",
                    "sm_util_percent",
                    "sm_occupancy_percent",
                    "tensor_util_percent",
                    "dram_bw_util_percent",
                )
            ]
            shown = " ".join(f"{'–' if v is None else f'{v:.1f}':>6}" for v in cells[1:])
            if metric is None:
                verdict = "reported only"
            elif gpu[metric] is not None and gpu[metric] > floor:
                verdict, passed = f"PASS ({metric} > {floor:g})", passed + 1
            else:
                verdict, failed = f"FAIL ({metric} = {gpu[metric]}, needs > {floor:g})", failed + 1
            say(f"{load:<12} {'–' if cells[0] is None else f'{cells[0]:.0f}':>9} {shown}  {verdict}")
        return passed, failed
    finally:
        nv.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the output files")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the load phase")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        if not count:
            raise RuntimeError("NVML reports no GPUs")
    except Exception as err:  # noqa: BLE001
        print(f"no NVIDIA GPU here ({type(err).__name__}: {err}): nothing to check")
        return 0

    from hwprobe.testing import nvml_replay

    say(f"{count} NVIDIA GPU(s); python {sys.version.split()[0]}; output in {out}")
    have_smi = shutil.which("nvidia-smi") is not None
    if not have_smi:
        say("nvidia-smi is not on PATH: the comparison and -q captures are skipped")

    # -- idle ----------------------------------------------------------------------------
    def record_idle() -> None:
        (out / "nvml_idle.json").write_text(json.dumps(nvml_replay.record(note="idle"), indent=1))
        say("wrote nvml_idle.json")

    step("record NVML idle", record_idle)

    def sample_idle() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "hwprobe", "sample"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-500:]}")
        (out / "sample_idle.json").write_text(done.stdout)
        say("wrote sample_idle.json; agent stderr: " + " | ".join(done.stderr.strip().splitlines()))
        return json.loads(done.stdout)

    document = step("hwprobe sample", sample_idle)
    smi_csv = (
        step("nvidia-smi --query-gpu", lambda: nvidia_smi(f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"))
        if have_smi
        else None
    )
    passed = failed = 0
    if document and smi_csv:
        say("\n== idle: nvidia-smi --query-gpu vs python -m hwprobe sample")
        result = step("compare", lambda: compare(smi_csv, document))
        if result:
            passed, failed = result
    if have_smi:
        step("nvidia-smi -q idle", lambda: (out / "nvidia_smi_q_idle.txt").write_text(nvidia_smi("-q")))

    # -- load ----------------------------------------------------------------------------
    say(f"\n== load: bf16 8192 matmuls for {args.seconds:.0f} s, agent loop at 1 s / 10 s windows")
    load = step(
        "start the torch load",
        lambda: subprocess.Popen(
            [sys.executable, "-c", LOAD_SCRIPT, str(args.seconds + 8)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
    )
    windows: list[dict[str, Any]] = []
    if load is not None:
        ready = load.stdout.readline().strip() if load.stdout else ""
        if ready != "ready":
            rest = load.stdout.read() if load.stdout else ""
            say(f"torch load did not start: {ready} {rest[-800:]}")
            load.kill()
            load = None
    if load is not None:

        def during() -> None:
            step(
                "record NVML under load",
                lambda: (out / "nvml_load.json").write_text(json.dumps(nvml_replay.record(note="load"), indent=1)),
            )
            if have_smi:
                step("nvidia-smi -q load", lambda: (out / "nvidia_smi_q_load.txt").write_text(nvidia_smi("-q")))

        windows = step("agent loop", lambda: agent_loop(args.seconds, out, during)) or []
        try:
            tail, _ = load.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            load.kill()
            tail, _ = load.communicate()
        for line in (tail or "").strip().splitlines():
            say(line)

    # -- checks --------------------------------------------------------------------------
    if windows and document:
        say("\n== load checks (per physical GPU; the loaded GPU is torch's cuda:0)")
        idle = {g["uuid"]: g for g in document["sample"]["gpus"]}
        full = [w for w in windows if w["count"] >= 5]
        loaded = full[1:] or full  # the first window may include the ramp-up
        for uuid, before in idle.items():
            series = [g for w in loaded for g in w["gpus"] if g["uuid"] == uuid]
            if not series:
                continue

            def peak(metric: str, series: list[dict[str, Any]] = series) -> float | None:
                values = [stat(g[metric]) for g in series if g[metric] is not None]
                return max(values) if values else None

            base = {m: stat(before[m]) for m in ("util_percent", "power_watts", "mem_used_bytes")}
            pids = {p["pid"]: p for g in series for p in (g["processes"] or [])}
            torch_proc = pids.get(load.pid) if load is not None else None
            rows = [
                (
                    "util_percent rises above 50 %",
                    base["util_percent"],
                    peak("util_percent"),
                    (peak("util_percent") or 0) > 50,
                ),
                (
                    "power_watts rises by 50 W",
                    base["power_watts"],
                    peak("power_watts"),
                    peak("power_watts") is not None
                    and base["power_watts"] is not None
                    and peak("power_watts") > base["power_watts"] + 50,
                ),
                (
                    "mem_used_bytes rises by 1 GiB",
                    base["mem_used_bytes"],
                    peak("mem_used_bytes"),
                    peak("mem_used_bytes") is not None
                    and base["mem_used_bytes"] is not None
                    and peak("mem_used_bytes") > base["mem_used_bytes"] + 1024 * MiB,
                ),
                (
                    "torch pid in processes with memory",
                    load.pid if load else None,
                    torch_proc,
                    bool(torch_proc and (torch_proc["mem_used_bytes"] or 0) > 0),
                ),
            ]
            for label, was, now, ok in rows:
                say(f"{uuid[:12]} {label:<36} idle={was} load={now}  {'PASS' if ok else 'FAIL'}")
                passed, failed = passed + ok, failed + (not ok)
            break  # torch loads cuda:0 only: check the first GPU

    say("\n== GPM: efficiency metrics against the load that produced them (cuda:0)")
    result = step("GPM check", lambda: gpm_check(out))
    if result:
        passed, failed = passed + result[0], failed + result[1]

    say(f"\nsummary: {passed} PASS, {failed} FAIL, {time.monotonic() - started:.0f} s")
    (out / "compare.txt").write_text("\n".join(lines_out) + "\n")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
