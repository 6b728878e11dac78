"""A sentiment task generated in code, with its own word-level tokenizer: runs with no files.

Each example is a sequence of words; the label is 1 when it holds more positive than negative
words (never a tie). It is the quickstart's task: learnable in a minute on a CPU by LoRA on a small
random-weight encoder, with chance at 50%.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import datasets
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.registry import register_task

POSITIVE = "good great fine superb lovely brilliant pleasant wonderful charming delightful".split()
NEGATIVE = "bad awful poor dull boring terrible weak clumsy tedious dreadful".split()
NEUTRAL = (
    "the a movie film plot actor scene story music end it was and but very quite with this "
    "that of in on for director script"
).split()
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]


@dataclass(frozen=True)
class WordSentimentTask(Task):
    """Binary sentiment by majority of positive vs negative words, generated from a seed (the
    quickstart's task, short form ``data.task: quickstart``)."""

    sizes: tuple[tuple[str, int], ...] = (("train", 2000), ("validation", 500), ("test", 500))
    """Examples per split, ``[[split, size], ...]``."""
    min_words: int = 6
    """Fewest words in an example."""
    max_words: int = 14
    """Most words in an example."""
    seed: int = 1234
    """Seed of the generated examples (each split has its own stream)."""

    name: ClassVar[str] = "quickstart"
    num_labels: ClassVar[int] = 2
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is not None:
            raise SsmloraError(
                f"Task {self.name!r} is generated in code and reads no files: remove data.data_dir."
            )

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        sizes = dict(self.sizes)
        if split not in sizes:
            raise SsmloraError(f"{self.name}: no {split!r} split; sizes has {list(sizes)}.")
        index = list(sizes).index(split)
        rng = random.Random(self.seed * 1000 + index)
        rows = [self._example(rng) for _ in range(sizes[split])]
        return datasets.Dataset.from_list(rows)

    def _example(self, rng: random.Random) -> dict:
        n = rng.randint(self.min_words, self.max_words)
        n_sent = rng.randint(1, max(1, n // 2))
        n_pos = rng.randint(0, n_sent)
        if 2 * n_pos == n_sent:  # no ties: one more word decides
            n_sent += 1
            n_pos += rng.randint(0, 1)
        words = rng.sample(POSITIVE * 3, n_pos) + rng.sample(NEGATIVE * 3, n_sent - n_pos)
        words += [rng.choice(NEUTRAL) for _ in range(max(0, n - n_sent))]
        rng.shuffle(words)
        return {"text_a": " ".join(words), "text_b": None, "label": int(2 * n_pos > n_sent)}

    def builtin_tokenizer(self) -> PreTrainedTokenizerFast:
        """Word-level tokenizer over the task's vocabulary, RoBERTa-style specials."""
        vocab = {w: i for i, w in enumerate(SPECIAL + POSITIVE + NEGATIVE + NEUTRAL)}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", 0), ("</s>", 2)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            cls_token="<s>",
            sep_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
        )


register_task("quickstart", WordSentimentTask)
