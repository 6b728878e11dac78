"""Chunked truncated backpropagation through time for HRM on causal LMs (``HRMConfig.tbptt_chunk``,
the HRM reference code's training of sequences longer than memory allows).

A sequence of ``L`` tokens is read in chunks of ``c``: each chunk's forward continues from the
SSM state (:func:`~ssmlora_app.adapters.hrm_layers.carried_state`, norm-clipped to
``state_clip``) and the attention's KV cache the previous chunk left, both **detached**, so the
activations of one chunk at a time are alive and no gradient crosses a chunk boundary. The loss
value is the whole sequence's (the mean over its target tokens: the forward is the same, a test
checks it against one forward); its gradient is the truncated one.

Lightning backpropagates the returned loss once per step (DDP, precision and gradient
accumulation see one ordinary backward): the gradients of every chunk but the last are taken
right after that chunk's forward (``torch.autograd.grad``, nothing written to ``.grad``), kept in
one buffer per trainable parameter, and joined to the last chunk's loss as ``Σ p·g − Σ p·g``
(detached): zero in value, ``g`` in gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmlora_app.adapters.hrm_layers import carried_state
from ssmlora_app.adapters.registry import adapter_config

IGNORE = -100
"""Label of the positions outside the target (transformers' ``ignore_index``)."""


def _cache_argument(out: Any) -> tuple[str, Any]:
    """The KV cache a forward returned and the keyword that passes it back (``cache`` in
    transformers ≥ 5.2x, ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        if name in out and out[name] is not None:
            return name, out[name]
    raise RuntimeError("The backbone returned no KV cache: chunked training needs use_cache.")


@torch.no_grad()
def detach_cache(cache: Any) -> Any:
    """``cache`` with every key and value tensor detached (in place for a transformers
    ``Cache``), so no gradient reaches an earlier chunk through attention."""
    if isinstance(cache, tuple | list):  # the legacy tuple of (key, value) per layer
        return type(cache)(detach_cache(layer) for layer in cache)
    if isinstance(cache, Tensor):
        return cache.detach()
    for layer in getattr(cache, "layers", []):  # transformers 5: one object per layer
        for name in ("keys", "values"):
            value = getattr(layer, name, None)
            if isinstance(value, Tensor):
                setattr(layer, name, value.detach())
    for name in ("key_cache", "value_cache"):  # transformers 4: lists of tensors
        tensors = getattr(cache, name, None)
        if isinstance(tensors, list):
            tensors[:] = [t.detach() for t in tensors]
    return cache


def chunk_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed negative log-likelihood of ``targets (B, n)`` under ``logits (B, ≥n, V)``
    (position ``t`` predicts target ``t``), positions labelled ``-100`` left out."""
    logits = logits[:, : targets.shape[1]].float()
    nll = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    return (nll * (targets != IGNORE)).sum()


def tbptt_loss(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """The causal-LM loss of one batch, by chunks of ``HRMConfig.tbptt_chunk`` tokens when the
    sequences are longer (see the module docstring); one forward otherwise, and outside training
    (no gradient, or the model in eval mode)."""
    config = adapter_config(model)
    chunk = getattr(config, "tbptt_chunk", None)
    length = input_ids.shape[1]
    if not chunk or length <= chunk or not (torch.is_grad_enabled() and model.training):
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    params = [p for p in model.parameters() if p.requires_grad]
    buffers: list[Tensor | None] = [None] * len(params)
    count = (labels[:, 1:] != IGNORE).sum().clamp(min=1)
    earlier = torch.zeros((), device=input_ids.device)
    cache_kw: dict[str, Any] = {}
    with carried_state(model):
        for start in range(0, length, chunk):
            end = min(start + chunk, length)
            out = model(input_ids=input_ids[:, start:end], attention_mask=attention_mask[:, :end],
                        use_cache=True, **cache_kw)  # fmt: skip
            # position t of the chunk predicts token t + 1 of the sequence (the next chunk's first)
            loss = chunk_nll(out.logits, labels[:, start + 1 : end + 1]) / count
            if end == length:
                break
            name, cache = _cache_argument(out)
            cache_kw = {name: detach_cache(cache)}
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None:
                    buffers[i] = g if buffers[i] is None else buffers[i] + g
            earlier = earlier + loss.detach()
    joined = [(p * g).sum() for p, g in zip(params, buffers, strict=True) if g is not None]
    if not joined:
        return loss + earlier
    carry = torch.stack(joined).sum()  # gradient: the earlier chunks' g; value: cancelled below
    return loss + earlier + (carry - carry.detach())
