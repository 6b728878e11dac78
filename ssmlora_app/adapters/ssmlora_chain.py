"""The depth-wise state chain of SSMLoRA (the paper's state passed between layers): one store per model, reset every forward.

SSMLoRA's recurrence runs over **depth**, not over tokens: the module at position ``l`` of a chain
(e.g. the value projection of the l-th adapted layer) reads the state ``h`` written by position
``l − 1`` of the same chain **in the same model forward**. The store is keyed by
``(chain, position)`` rather than "the latest state", so when activation checkpointing re-runs a
layer's forward during backward, the recomputation reads exactly the state of the first pass.

The injector registers :meth:`StateChain.reset` as a forward pre-hook on the top-level model, so
nothing carries across forward calls, batches, examples or train/eval. There is one store per
injected model and no module-level state.
"""

from __future__ import annotations

from typing import Any

import torch

from ssmlora_app.errors import SsmloraError


class StateChain:
    """States written during the current forward of one model, keyed by ``(chain, position)``.

    Each state is ``(..., r)`` with the leading shape of the module's input (``(B, L, r)`` in the
    encoder, ``(B, r)`` in a pooled head). Entries stay until the next forward of the model, so
    a checkpointed backward can read them; with ``detach_state=False`` they keep their autograd
    graph alive until then.
    """

    def __init__(self) -> None:
        self.states: dict[tuple[str, int], torch.Tensor] = {}

    def reset(self, module: Any = None, args: Any = None) -> None:
        """Forget every state (a forward pre-hook: ``hook(module, args)``)."""
        self.states.clear()

    def read(self, chain: str, position: int, like: torch.Tensor) -> torch.Tensor | None:
        """The state ``position − 1`` wrote in this forward; ``None`` (zeros) at position 0.

        ``like`` is the reader's ``u`` (``(..., r)``); the state must have its shape.
        """
        if position == 0:
            return None
        try:
            state = self.states[(chain, position - 1)]
        except KeyError:
            raise SsmloraError(
                f"SSMLoRA chain {chain!r}: position {position} ran before position "
                f"{position - 1} in this forward. Call the model SSMLoRA was injected into (its "
                "forward resets the chain), and make sure the chain's modules run in model "
                "order (set SSMLoRAConfig.chains to group modules that run in sequence)."
            ) from None
        if state.shape != like.shape:
            raise SsmloraError(
                f"SSMLoRA chain {chain!r}: position {position} got a state of shape "
                f"{tuple(state.shape)} from position {position - 1} but its input gives "
                f"{tuple(like.shape)}. A chain must link modules that see the same tokens; "
                "call the injected (top-level) model so each forward starts a fresh chain, and "
                "do not chain encoder modules with a pooled head."
            )
        return state

    def write(self, chain: str, position: int, state: torch.Tensor) -> None:
        """Store the state position ``position`` passes on (``(..., r)``)."""
        self.states[(chain, position)] = state
