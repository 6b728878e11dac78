"""Addition as a prompt/completion task generated in code, seeded: no files, any causal LM.

Each example asks for the sum of two random numbers of ``digits`` digits ("What is 37 + 58?
Answer with the number only.") and the completion is the sum ("95"); evaluation is greedy
generation scored by exact match. A pretrained instruct model (SmolLM2-135M-Instruct) knows the
arithmetic but answers in sentences ("The sum of 37 and 58 is 95."), so its exact match starts at 0
and rises as an adapter learns the answer format: a quick check that a fine-tuning run on a real
decoder learns, and the prompt/completion task of the real-weights results.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import datasets
from transformers import PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.chat import render_chat
from ssmlora_app.tasks.registry import register_task
from ssmlora_app.tasks.vocab import byte_tokenizer


@dataclass(frozen=True)
class AdditionTask(Task):
    """Two-number addition, prompt -> completion, generated from a seed (short form
    ``data.task: addition``; causal LM only, scored by greedy generation)."""

    name: str = "addition"
    digits: int = 2
    """Digits of each addend (2: 10..99)."""
    sizes: tuple[tuple[str, int], ...] = (("train", 400), ("validation", 100), ("test", 100))
    """Examples per split, ``[[split, size], ...]``; every split is its own seeded draw."""
    seed: int = 0
    """Base seed of the draws."""
    prompt: str = "What is {a} + {b}? Answer with the number only."
    """The question, with ``{a}`` and ``{b}`` for the addends."""
    chat_template: bool = False
    """Render the prompt as a user message with the tokenizer's chat template (instruct models)."""
    system_prompt: str | None = None
    """With ``chat_template``: a system message first (None: the template's default, if any)."""
    max_new_tokens: int = 8
    """Tokens generated per answer (a sum of two d-digit numbers has d + 1 digits)."""

    objectives: ClassVar[tuple[str, ...]] = ("causal_lm",)
    lm_eval: ClassVar[str] = "generate"
    lm_metrics: ClassVar[tuple[str, ...]] = ("exact_match", "token_f1")
    metrics: ClassVar[tuple[str, ...]] = ("exact_match",)
    num_labels: ClassVar[int] = 1
    test_split: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.digits < 1:
            raise SsmloraError(f"addition: digits must be at least 1, got {self.digits}.")
        if "{a}" not in self.prompt or "{b}" not in self.prompt:
            raise SsmloraError(f"addition: the prompt needs {{a}} and {{b}}, got {self.prompt!r}.")
        if self.max_new_tokens <= 0:
            raise SsmloraError("addition: max_new_tokens must be positive.")

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is not None:
            raise SsmloraError("Task 'addition' is generated in code: remove data.data_dir.")

    def examples(self, split: str) -> list[tuple[int, int]]:
        """The ``(a, b)`` pairs of ``split``, drawn from ``(seed, split)``."""
        sizes = dict(self.sizes)
        if split not in sizes:
            raise SsmloraError(f"addition: unknown split {split!r}; it has {sorted(sizes)}.")
        rng = random.Random(f"addition:{self.seed}:{split}")
        low, high = 10 ** (self.digits - 1) if self.digits > 1 else 0, 10**self.digits - 1
        return [(rng.randint(low, high), rng.randint(low, high)) for _ in range(sizes[split])]

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        pairs = self.examples(split)
        sums = [str(a + b) for a, b in pairs]
        return datasets.Dataset.from_dict(
            {
                "document": [""] * len(pairs),
                "prompt": [self.prompt.format(a=a, b=b) for a, b in pairs],
                "target": sums,
                "choices": [[] for _ in pairs],
                "label": [-1] * len(pairs),
                "references": [[s] for s in sums],
            }
        )

    def render_lm(
        self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> datasets.Dataset:
        return render_chat(
            ds,
            tokenizer,
            self.chat_template,
            self.system_prompt,
            teacher_forced=False,
            where="data.task.chat_template",
        )

    def builtin_tokenizer(self):
        """UTF-8 bytes with EOS/pad: runs on a tiny model without tokenizer files (tests)."""
        return byte_tokenizer()


register_task("addition", AdditionTask)
