"""GLUE as the SDLoRA repository runs it (furiosa-ai/ssm-peft@6a0a7247 ``dataset/glue.py``,
``dataset/base.py``): a causal LM writes the class's label word, and the "tvt" protocol.

An example is ``<instruction>###<text_a>[###<text_b>]###<label word><eos>``: the instruction is
promptbench's for the task (it names the label words, the class ids as digits ``0``, ``1``,
``2``), ``###`` the benchmark's separator (:data:`~ssmlora_app.tasks.benchmark.SEPARATOR`); the
loss covers the label word. The repository scores the arg-max token over the whole vocabulary at
the label's position, teacher-forced, and leaves out the answers that are no label word; here the
answer is generated (greedy: for one-token label words the same token) and read by
:mod:`ssmlora_app.objectives.label_words`, which counts an answer that is no label word as wrong
unless ``out_of_class: drop`` (the repository's rule). Where we differ from the repository
besides: the EOS after the label word (the repository has it commented out, ``input ### label``),
the tokenizer's BOS first when it has one, and the input tokenised as one string.

"tvt": ``train`` and ``validation`` are 80% / 20% of the official training set (seeded, see
:func:`~ssmlora_app.tasks.benchmark.tvt_split`), ``test`` the official validation set (MNLI:
matched and mismatched together, as the repository concatenates them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import datasets

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import UNLABELLED
from ssmlora_app.tasks.benchmark import SEPARATOR

if TYPE_CHECKING:
    from ssmlora_app.tasks.glue import GlueTask

PROMPTS = {
    "rte": "Determine if the given pair of sentences displays entailment or not_entailment. "
    "Respond with '0' if entailment or '1' if not_entailment: ",
    "cola": "Review the sentence below and identify whether its grammar is Unacceptable or "
    "Acceptable. Respond with '0' if Unacceptable or '1' if Acceptable: ",
    "mrpc": "Can the given sentences be considered semantically identical? Respond with '0' if "
    "not_equivalent or '1' if equivalent: ",
    "sst2": "Read the provided excerpt and choose between negative and positive to describe its "
    "sentiment. Respond with '0' if negative or '1' if positive: ",
    "qnli": "Consider the context and question, and indicate if the answer can be logically "
    "deduced from the context. Respond with '0' if entailment or '1' if not_entailment: ",
    "qqp": "Can these two statements be considered equal in meaning? Respond with '0' if "
    "not_equivalent or '1' if equivalent: ",
    "mnli": "Assess the connection between the following sentences and classify it as "
    "entailment, neutral, or contradiction. Respond with '0' if entailment, '1' if neutral or "
    "'2' if contradiction: ",
    "wnli": "Identify whether the given pair of sentences demonstrates entailment or "
    "not_entailment. Respond with '0' if not_entailment or '1' if entailment: ",
}
"""The repository's instruction per task (promptbench's); STS-B has none (it is not run)."""


def label_word_prompt(instruction: str, text_a: str, text_b: str | None) -> str:
    """The input of one example, up to the label word."""
    texts = [text_a] if text_b is None else [text_a, text_b]
    return f"{instruction}{SEPARATOR}" + "".join(f"{t}{SEPARATOR}" for t in texts)


def label_words(task: GlueTask) -> list[str]:
    """The task's label words (its ``label_words``, or the class ids as digits), checked."""
    words = list(task.label_words or (str(i) for i in range(task.num_labels)))
    if len(words) != task.num_labels or len({w.strip() for w in words}) != len(words):
        classes = f" ({list(task.label_names)})" if task.label_names else ""
        raise SsmloraError(
            f"{task.name}: data.task.label_words needs {task.num_labels} distinct words, one per "
            f"class in id order{classes}; got {words}."
        )
    return words


def label_word_options(task: GlueTask) -> dict:
    """The metric options :mod:`ssmlora_app.objectives.label_words` reads."""
    return {
        "label_words": label_words(task),
        "label_names": list(task.label_names) if task.label_names else None,
        "out_of_class": task.out_of_class,
    }


def label_word_rows(task: GlueTask, ds: datasets.Dataset) -> datasets.Dataset:
    """Classification rows (``text_a``, ``text_b``, ``label``) -> causal-LM rows: the prompt up
    to the last ``###``, the label word as target and reference, the class as ``label`` (an
    unlabelled test split keeps its placeholder and its index, and has no target)."""
    instruction = PROMPTS[task.name] if task.instruction is None else task.instruction
    words = label_words(task)

    def row(ex: dict) -> dict:
        word = words[ex["label"]] if ex["label"] != UNLABELLED else ""
        return {
            "document": "",
            "prompt": label_word_prompt(instruction, ex["text_a"], ex["text_b"]),
            "target": word,
            "choices": [],
            "references": [word] if word else [],
        }

    return ds.map(row, remove_columns=["text_a", "text_b"], desc="Formatting label words")
