"""HRM's scan alone: every implementation against a parameter-matched LoRA bypass, side by side.

For each length, interleaved rounds (process CPU time, one thread) of forward + backward of

* ``bypass``: LoRA of rank ``d`` on ``u (B, L, D)``, ``(u Aᵀ) Bᵀ`` as LoRALinear computes it
  (``2dD`` parameters, HRM has ``2dD + 2d + 1``);
* ``chunked``, ``fft``: ``discretize`` + ``lti_scan``;
* ``sequential``: the reference (plain autograd recurrence), up to ``--sequential_max``;
* ``states_*``: the states kernels alone on ``b (B, L, d)`` (no projections), fwd + bwd,

and prints medians with the median of paired per-round ratios to ``bypass`` (and to
``chunked`` for the sequential reference). Used for ``benchmarks/RESULTS.md``::

    python benchmarks/hrm_scan.py --D 2048 --d 32 --batch 1 --lengths 512,1024,2048,4096,8192,16384
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssmlora_app.adapters.hrm_layers import discretize
from ssmlora_app.linalg import thin_matmul
from ssmlora_app.ssm.scan import lti_scan, states_chunked, states_fft, states_sequential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--D", type=int, default=2048)
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sequential_max", type=int, default=4096)
    parser.add_argument("--skip", default="", help="comma-separated rows to leave out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    D, d = args.D, args.d
    log_A = torch.log(torch.arange(1, d + 1, dtype=torch.float32)).requires_grad_()
    log_dt = torch.full((d,), -3.0).requires_grad_()
    B = (torch.randn(d, D, generator=gen) / D**0.5).requires_grad_()
    C = (torch.randn(D, d, generator=gen) / d**0.5).requires_grad_()
    lora_A = (torch.randn(d, D, generator=gen) / D**0.5).requires_grad_()
    lora_B = (torch.randn(D, d, generator=gen) * 0.01).requires_grad_()
    params = [log_A, log_dt, B, C, lora_A, lora_B]

    def scan(u, g, method):
        A_bar, B_bar = discretize(log_A, log_dt, B)
        lti_scan(u, A_bar, B_bar, C, method=method)[0].backward(g)

    def bypass(u, g):
        thin_matmul(u @ lora_A.T, lora_B.T).backward(g)

    def states(b, g, kernel):
        A_bar = torch.exp(-torch.exp(log_A) * torch.nn.functional.softplus(log_dt))
        kernel(b, A_bar, None).backward(g)

    print(
        f"scan alone, fwd + bwd: D={D}, d={d}, batch {args.batch}, torch {torch.__version__}, "
        f"1 thread, process CPU time, median of {args.rounds} interleaved rounds; "
        "chunk: ssm.scan.chunk_size (√L, 8-128)"
    )
    skip = set(filter(None, args.skip.split(",")))
    for length in (int(x) for x in args.lengths.split(",")):
        u = torch.randn(args.batch, length, D, generator=gen).requires_grad_()
        g = torch.randn(args.batch, length, D, generator=gen)
        b = torch.randn(args.batch, length, d, generator=gen).requires_grad_()
        gb = torch.randn(args.batch, length, d, generator=gen)
        calls = {
            "bypass": lambda u=u, g=g: bypass(u, g),
            "chunked": lambda u=u, g=g: scan(u, g, "chunked"),
            "fft": lambda u=u, g=g: scan(u, g, "fft"),
            "states_chunked": lambda b=b, g=gb: states(b, g, states_chunked),
            "states_fft": lambda b=b, g=gb: states(b, g, states_fft),
        }
        if length <= args.sequential_max:
            calls["sequential"] = lambda u=u, g=g: scan(u, g, "sequential")
            calls["states_sequential"] = lambda b=b, g=gb: states(b, g, states_sequential)
        calls = {k: v for k, v in calls.items() if k not in skip}
        for call in calls.values():  # warm-up
            call()
        samples: dict[str, list[float]] = {name: [] for name in calls}
        names = list(calls)
        for rnd in range(args.rounds):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                start = time.process_time()
                calls[name]()
                samples[name].append(time.process_time() - start)
        for p in [*params, u, b]:
            p.grad = None

        def paired(name, base, samples=samples):
            return statistics.median(a / b for a, b in zip(samples[name], samples[base]))

        parts = []
        for name in names:
            ms = statistics.median(samples[name]) * 1e3
            if name.startswith("states_"):
                ratio = f"x{paired(name, 'states_chunked'):.2f} states_chunked"
            else:
                ratio = f"x{paired(name, 'bypass'):.2f} bypass"
            parts.append(f"{name} {ms:.2f} ms ({ratio})")
        if "sequential" in samples:
            parts.append(f"sequential/chunked x{paired('sequential', 'chunked'):.1f}")
        print(f"L={length}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
