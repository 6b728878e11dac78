"""AdamW's for-loop against its multi-tensor (``foreach``) and ``fused`` implementations on CPU.

``ssmlora fit`` builds the optimizer with :func:`ssmlora_app.optim.build_optimizer`, which turns
``foreach`` on where it was left unset (torch does so by itself only on CUDA). This measures what
that changes, side by side in one process: for each adapter, three models of one backbone (same
seed, same adapter), trained with AdamW ``foreach=False`` (torch's CPU default), ``foreach=True``
(ours) and ``fused=True``; the train step (process CPU time, interleaved, paired per-round
ratios with their quartiles), ``optimizer.step`` alone, and the peak memory of a train step.
Used for ``benchmarks/RESULTS.md``::

    python benchmarks/adamw_foreach.py --preset roberta-base --batch 2 --seq 128 --repeats 15
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from ssmlora_app.adapters import HRMConfig, LoRAConfig, SSMLoRAConfig, inject_adapters
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.optim import build_optimizer
from ssmlora_app.tools.bench import PRESETS, Runner, interleaved_times, peak_memory_mb

VARIANTS = {"for_loop": {"foreach": False}, "foreach": {}, "fused": {"fused": True}}
"""Name -> AdamW keywords (``foreach`` is the one ``build_optimizer`` picks when left unset)."""


def adapters(targets: list[str]) -> dict:
    return {
        "lora": LoRAConfig(r=8, alpha=16, target_modules=targets),
        "ssmlora_full_model": SSMLoRAConfig(preset="full_model"),
        "hrm": HRMConfig(d_state=16),
    }


def runner(backbone: BackboneConfig, config, keywords: dict) -> Runner:
    torch.manual_seed(0)
    model = inject_adapters(build_classifier(backbone, 2, "single_label_classification"), config)
    optimizer = build_optimizer(functools.partial(torch.optim.AdamW, lr=1e-4, **keywords), model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Runner(model, optimizer, trainable)


def paired(times, name: str, base: str) -> str:
    ratios = [a / b for a, b in zip(times[name].samples, times[base].samples)]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.3f} ({q1:.3f}-{q3:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="roberta-base", choices=["roberta-base", "llama-tiny"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = PRESETS[args.preset]
    backbone = BackboneConfig(config=dict(spec.backbone))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, spec.backbone["vocab_size"], (args.batch, args.seq), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 0] % 2}
    cpu = torch.device("cpu")
    print(
        f"{args.preset}, batch {args.batch} x {args.seq}, torch {torch.__version__}, "
        f"{args.threads} thread(s), process CPU time, {args.repeats} interleaved rounds after 2 "
        "warm-up; ratios are paired per round, median (quartiles), to for_loop"
    )
    for method, config in adapters(list(spec.lora_targets)).items():
        runners = {name: runner(backbone, config, kw) for name, kw in VARIANTS.items()}
        tensors = sum(len(g["params"]) for g in runners["foreach"].optimizer.param_groups)
        steps = interleaved_times(
            {k: functools.partial(r.train_step, batch) for k, r in runners.items()},
            2, args.repeats, cpu, time.process_time,
        )  # fmt: skip
        optim = interleaved_times(
            {k: r.optimizer.step for k, r in runners.items()}, 2, args.repeats, cpu,
            time.process_time,
        )  # fmt: skip
        print(f"{method}: {runners['foreach'].trainable:,} trainable in {tensors} tensors")
        for name, r in runners.items():
            peak = peak_memory_mb(functools.partial(r.train_step, batch), cpu)
            print(
                f"  {name:9} train step {steps[name].median * 1e3:8.1f} ms  ratio "
                f"{paired(steps, name, 'for_loop')}   optimizer.step "
                f"{optim[name].median * 1e3:7.2f} ms  ratio {paired(optim, name, 'for_loop')}   "
                f"peak {peak if peak is None else round(peak, 1)} MiB"
            )


if __name__ == "__main__":
    main()
