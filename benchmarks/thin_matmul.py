"""Forward + backward of the products with thin matrices, in the two memory layouts.

Reproduces the numbers in ``ssmlora_app/linalg.py``'s docstring: for each shape, the adapter's
product stored as ``nn.Linear`` / a plain parameter stores it, and through
:func:`ssmlora_app.linalg.thin_matmul` (rank-major), best of 3 × 200 calls, one thread::

    python benchmarks/thin_matmul.py
"""

from __future__ import annotations

import timeit

import torch
import torch.nn.functional as F

from ssmlora_app.linalg import thin_matmul


def best_us(fn, number: int = 200) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def rows(
    d_in: int, d_out: int, r: int = 8, tokens: int = 256
) -> list[tuple[str, str, float, float]]:
    """(product, stored as, µs as stored, µs rank-major) for one linear's two adapter products."""
    x = torch.randn(tokens, d_in, requires_grad=True)
    u = torch.randn(tokens, r, requires_grad=True)
    w_a = torch.randn(d_in, r, requires_grad=True)  # SSMLoRA's W_a (d_in, r)
    b = torch.randn(d_out, r, requires_grad=True)  # nn.Linear(r, d_out).weight: LoRA's B
    g_u, g_y = torch.ones(tokens, r), torch.ones(tokens, d_out)
    pairs = (
        (
            f"down x W_a  ({d_in} -> {r})",
            "(d_in, r) row-major",
            lambda: (x @ w_a).backward(g_u),
            lambda: thin_matmul(x, w_a).backward(g_u),
        ),
        (
            f"up   u Bᵀ   ({r} -> {d_out})",
            "nn.Linear (d_out, r)",
            lambda: F.linear(u, b).backward(g_y),
            lambda: thin_matmul(u, b.T).backward(g_y),
        ),
    )
    for _, _, plain, fast in pairs:  # warm-up
        plain(), fast()
    return [(name, stored, best_us(plain), best_us(fast)) for name, stored, plain, fast in pairs]


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, 256 tokens, r = 8; fwd + bwd in µs")
    print(f"{'product':30s} {'stored as':22s} {'as stored':>10s} {'rank-major':>11s}")
    for d_in, d_out in ((768, 768), (768, 3072), (3072, 768)):
        for name, stored, plain, fast in rows(d_in, d_out):
            print(f"{name:30s} {stored:22s} {plain:10.0f} {fast:11.0f}")


if __name__ == "__main__":
    main()
