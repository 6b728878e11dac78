"""Where SSMLoRA ``full_model``'s extra train-step time goes, against LoRA on the same linears:
torch.profiler over a few train steps of the ``llama-tiny`` bench preset, kernel time and kernel
launches per step by operator (benchmarks/RESULTS.md section 6).

    python benchmarks/ssmlora_profile.py --device cuda --seq_len 2048 --out OUT.txt
    python benchmarks/ssmlora_profile.py --device cpu --seq_len 64     # a quick dry run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.tools.bench.measure import _batch
from ssmlora_app.tools.bench.presets import PRESETS
from ssmlora_app.tools.bench.rows import build_runners

ROWS = ("lora_full_model_same", "ssmlora_full_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    preset = PRESETS["llama-tiny"]
    backbone = BackboneConfig(config=dict(preset.backbone))
    runners = build_runners(preset, backbone, list(ROWS), device, [])
    batch = _batch(preset.backbone["vocab_size"], args.batch_size, args.seq_len, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    lines = [f"ssmlora_profile: llama-tiny, {device}, batch {args.batch_size} x {args.seq_len}, "
             f"{args.steps} train steps after 2 warm-up"]  # fmt: skip
    for name in ROWS:
        runner = runners[name]
        for _ in range(2):
            runner.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                runner.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
        events = prof.key_averages()
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        lines.append(f"\n== {name}: {len(kernels) / args.steps:.0f} device kernels per step, "
                     f"{sum(e.self_device_time_total for e in kernels) / args.steps / 1e3:.2f} ms "
                     "device time per step")  # fmt: skip
        lines.append(events.table(sort_by=sort, row_limit=18, max_name_column_width=48))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
