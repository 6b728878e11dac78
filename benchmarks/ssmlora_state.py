"""Where SSMLoRA's state term goes: time, saved tensors and kernels, against LoRA on the same linears.

Three models of one backbone (random weights, same seed), side by side in one process:

* ``lora_same``: LoRA r=8 on exactly the linears SSMLoRA's preset adapts, as shipped (its scaled
  product added into the base output by one in-place GEMM, :func:`ssmlora_app.linalg.add_product_`,
  as SSMLoRA adds its own): against it, ``ssmlora`` shows the cost of the state term alone;
* ``lora_same_add``: ``lora_same`` with the forward LoRA had before (the product, its scale and
  the sum as three ops on ``(…, d_out)`` buffers);
* ``ssmlora``: SSMLoRA as shipped (the fused :class:`ssmlora_app.ssm.depth_state.DepthState`);
* ``ssmlora_autograd``: SSMLoRA with the state update written in autograd ops and the scale
  applied to the ``(…, d_out)`` product, i.e. the implementation before the fused node.

Prints the train step and inference (process CPU time, interleaved, median of paired per-round
ratios with their quartiles), the bytes autograd saves for backward in one training forward
(``saved_tensors_hooks``, each storage counted once), and torch.profiler's count of the op calls
a train step makes beyond LoRA's (the state term's kernels, and AdamW's per-tensor ops on twice
as many parameter tensors). Used for
``benchmarks/RESULTS.md``::

    python benchmarks/ssmlora_state.py --preset roberta-base --preset_name full_model \
        --batch 2 --seq 128 --repeats 21
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ssmlora_app.adapters import LoRAConfig, SSMLoRAConfig, inject_adapters
from ssmlora_app.adapters.lora import LoRALinear
from ssmlora_app.adapters.ssmlora import SSMLoRALinear
from ssmlora_app.adapters.ssmlora_presets import preset_modules
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.linalg import thin_matmul
from ssmlora_app.optim import build_optimizer
from ssmlora_app.ssm.depth_state import depth_state_reference, dropout_mask
from ssmlora_app.tools.bench import PRESETS, Runner, interleaved_times


class AutogradSSMLoRALinear(SSMLoRALinear):
    """SSMLoRA before the fused node: autograd ops, a zero state at position 0, scaled output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        u = thin_matmul(self.input_dropout(x.to(self.W_a.dtype)), self.W_a)
        h_prev = self.state_chain.read(self.chain, self.position, like=u)
        h_prev = torch.zeros_like(u) if h_prev is None else h_prev
        mask = dropout_mask(u, self.dropout) if self.training and self.dropout > 0 else None
        z, passed = depth_state_reference(
            u, h_prev, self.W_c, self.W_d, mask, norm=self.norm, eps=self.eps,
            pass_normalised=self.pass_normalised_state,
        )  # fmt: skip
        self.state_chain.write(
            self.chain, self.position, passed.detach() if self.detach_state else passed
        )
        return result.add_((z @ self.W_b).mul_(self.scaling).to(result.dtype))


class AddLoRALinear(LoRALinear):
    """LoRA before the in-place GEMM: ``(x Aᵀ) Bᵀ``, scaled in place, added in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        u = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))
        delta = thin_matmul(u, self.lora_B.weight.T).mul_(self.scaling).to(result.dtype)
        return result.add_(delta)


def build(kind: str, backbone: BackboneConfig, preset: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_classifier(backbone, 2, "single_label_classification")
    if kind.startswith("lora_same"):
        names = preset_modules(model, preset)
        head = [] if preset == "full_model" else None
        model = inject_adapters(
            model, LoRAConfig(r=8, alpha=16, target_modules=names, modules_to_save=head)
        )
        if kind == "lora_same_add":
            for module in model.modules():
                if isinstance(module, LoRALinear):
                    module.__class__ = AddLoRALinear
        return model
    model = inject_adapters(model, SSMLoRAConfig(preset=preset))
    if kind == "ssmlora_autograd":
        for module in model.modules():
            if isinstance(module, SSMLoRALinear):
                module.__class__ = AutogradSSMLoRALinear
    return model


def saved_bytes(runner: Runner, batch: dict) -> int:
    """Bytes of the distinct storages autograd saves during one training forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    runner.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = runner.model(**batch).loss
    del loss
    return sum(storages.values())


def profile_ops(runner: Runner, batch: dict, steps: int = 3) -> dict[str, tuple[float, float]]:
    """Op name -> (calls per train step, self CPU µs per train step)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.train_step(batch)
    return {e.key: (e.count / steps, e.self_cpu_time_total / steps) for e in prof.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="roberta-base", choices=["roberta-base", "llama-tiny"])
    parser.add_argument(
        "--preset_name", default="full_model", choices=["full_model", "attention_sparse"]
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = PRESETS[args.preset]
    backbone = BackboneConfig(config=dict(spec.backbone))
    runners = {}
    for kind in ("lora_same", "lora_same_add", "ssmlora", "ssmlora_autograd"):
        model = build(kind, backbone, args.preset_name)
        optimizer = build_optimizer(functools.partial(torch.optim.AdamW, lr=1e-4), model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        runners[kind] = Runner(model, optimizer, trainable)  # AdamW as ssmlora fit builds it
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, spec.backbone["vocab_size"], (args.batch, args.seq), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 0] % 2}
    device = torch.device("cpu")
    print(
        f"{args.preset} {args.preset_name}, batch {args.batch} x {args.seq}, torch "
        f"{torch.__version__}, {args.threads} thread(s), process CPU time, "
        f"{args.repeats} interleaved rounds after 2 warm-up"
    )
    for what, call in (("train", "train_step"), ("infer", "infer")):
        times = interleaved_times(
            {k: functools.partial(getattr(r, call), batch) for k, r in runners.items()},
            2, args.repeats, device, time.process_time,
        )  # fmt: skip
        for kind in runners:
            parts = []
            for base in ("lora_same", "lora_same_add"):
                ratios = [a / b for a, b in zip(times[kind].samples, times[base].samples)]
                q1, _, q3 = statistics.quantiles(ratios, n=4)
                parts.append(f"{statistics.median(ratios):.3f} ({q1:.3f}-{q3:.3f})")
            print(
                f"  {what:5} {kind:17} median {times[kind].median * 1e3:8.1f} ms  paired "
                f"ratio (quartiles) to lora_same {parts[0]}, to lora_same_add {parts[1]}"
            )
    print("saved for backward in one training forward (MiB):")
    saved = {k: saved_bytes(r, batch) for k, r in runners.items()}
    for kind, value in saved.items():
        print(f"  {kind:17} {value / 2**20:8.2f}  ({value / saved['lora_same']:.3f}x lora_same)")
    print("torch.profiler, one train step: op calls beyond lora_same's (top 8 by extra calls)")
    ops = {k: profile_ops(r, batch) for k, r in runners.items()}
    for kind, table in ops.items():
        extra = {
            name: n - ops["lora_same"].get(name, (0, 0))[0]
            for name, (n, _) in table.items()
            if n > ops["lora_same"].get(name, (0, 0))[0] + 0.5
        }
        top = sorted(extra.items(), key=lambda kv: -kv[1])[:8]
        listed = ", ".join(f"{name} +{n:.0f}" for name, n in top)
        print(f"  {kind:17} {sum(extra.values()):6.0f} extra calls: {listed}")


if __name__ == "__main__":
    main()
