"""benchmarks/gpu_check.sh in its CPU dry-run mode (so the GPU check cannot rot), and its plan."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_gpu_plan_covers_every_check_within_the_budget():
    args = argparse.Namespace(dry_run=False, work="w")
    steps = {name: (child, limit) for name, child, limit in gpu_check.plan(args)}
    assert {"env", "precision", "fsdp_lora", "fsdp_ssmlora", "fsdp_hrm", "sdt_pure"} <= set(steps)
    bench, _ = steps["bench_llama-1b-shapes"]
    assert bench[bench.index("--device") + 1] == "cuda"
    assert bench[bench.index("--seq_lens") + 1] == "[2048,4096,8192,16384]"
    assert all(limit <= 240 for _, limit in steps.values())
    assert gpu_check.BUDGET_S + 60 <= 8 * 60  # a minute left for the wheels and start-up


@pytest.mark.slow
def test_dry_run_writes_one_json_and_one_log(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        # a loaded CI machine must not fail on the GPU machine's time budget
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run", "--budget", "1200"],
        env=env, capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    report = json.loads((out / "gpu_check.json").read_text())
    log = (out / "gpu_check.log").read_text()
    steps = report["steps"]
    assert proc.returncode == 0, (proc.stdout, {k: v["status"] for k, v in steps.items()})
    assert report["dry_run"] and report["passed"]
    assert steps["env"]["status"] == "passed" and steps["env"]["cuda"] in (True, False)
    precision = steps["precision"]
    assert precision["status"] == "passed"
    assert set(precision["methods"]) == set(gpu_check.DRY_METHODS)
    for method, result in precision["methods"].items():
        assert result["steps"] == 8 and not result["over_tolerance"]
        held = gpu_check.CHECKED.get(method, tuple(precision["tolerance"]))
        assert all(result["gaps"][k] <= precision["tolerance"][k] for k in held)
        # a real comparison: both runs trained and evaluated
        assert 0 < result["fp32"]["val/loss"] < 5 and 0 <= result["bf16"]["val/accuracy"] <= 1
    for method in ("lora", "ssmlora", "hrm"):
        assert steps[f"fsdp_{method}"]["status"] == "skipped"
    assert steps["sdt_pure"]["status"] == "passed"
    assert "sdt_fused" not in steps  # fused Mamba kernels: recorded as absent, never faked
    bench = steps["bench_llama-tiny"]
    assert bench["status"] == "passed" and bench["rows"] > 0
    rows = json.loads((out / bench["file"]).read_text())["rows"]
    assert {"lora", "ssmlora_full_model"} <= {r["method"] for r in rows}
    for name in steps:
        assert f"===== {name}:" in log
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".png") == [
        "bench_llama-tiny.json",
        "gpu_check.json",
        "gpu_check.log",
    ]
