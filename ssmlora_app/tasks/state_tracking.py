"""State-tracking tasks generated in code, seeded and deterministic (the HRM paper's state-tracking
experiments; group word problems as in "The Illusion of State"), plus a loader for
group word problems stored as CSV (``seed,input,target``, e.g. ``A5=10.csv``).

Every generated task trains at ``train_length`` and evaluates at ``train_length`` (``validation``,
for checkpoint selection; ``test`` is a separate draw) and at each of ``eval_lengths``
(``validation_len{T}`` / ``test_len{T}``): length-generalisation curves from one run. Each split is
drawn from its own seed ``(seed, split, length)``, so splits never share a random stream.

Under ``causal_lm`` the model reads the prompt and is scored on the target tokens only
(teacher-forced arg-max); under ``classification`` the final state is the class.
"""

from __future__ import annotations

import csv
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import datasets
from transformers import PreTrainedTokenizerFast

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.registry import register_task
from ssmlora_app.tasks.vocab import word_tokenizer


# ----------------------------------------------------------------------------- automata and groups
def random_automaton(
    n_states: int, n_symbols: int, rng: random.Random, kind: str
) -> list[list[int]]:
    """Transition table ``table[state][symbol]``. ``random``: each entry uniform over the states
    (may have absorbing states); ``permutation``: each symbol permutes the states."""
    if kind == "random":
        return [[rng.randrange(n_states) for _ in range(n_symbols)] for _ in range(n_states)]
    if kind == "permutation":
        perms = [rng.sample(range(n_states), n_states) for _ in range(n_symbols)]
        return [[perms[a][s] for a in range(n_symbols)] for s in range(n_states)]
    raise SsmloraError(f"Automaton kind {kind!r}: use 'random' or 'permutation'.")


def run_automaton(table: list[list[int]], symbols: list[int], start: int = 0) -> list[int]:
    """The states after each symbol (``len(symbols)`` states), from ``start``."""
    states, state = [], start
    for a in symbols:
        state = table[state][a]
        states.append(state)
    return states


def group_elements(group: str, n: int) -> list[tuple[int, ...]]:
    """Elements of S_n (all permutations, lexicographic), A_n (the even ones) or Z_n (``(k,)``)."""
    if group == "Z":
        return [(k,) for k in range(n)]
    perms = list(itertools.permutations(range(n)))
    if group == "S":
        return perms
    if group == "A":
        return [p for p in perms if _is_even(p)]
    raise SsmloraError(f"group={group!r}: use 'S' (symmetric), 'A' (alternating) or 'Z' (cyclic).")


def _is_even(perm: tuple[int, ...]) -> bool:
    inversions = sum(1 for i, j in itertools.combinations(range(len(perm)), 2) if perm[i] > perm[j])
    return inversions % 2 == 0


def compose(group: str, n: int, p: tuple[int, ...], g: tuple[int, ...]) -> tuple[int, ...]:
    """``p · g``: first p, then g (permutations act on positions: ``(p·g)[i] = g[p[i]]``);
    Z_n: addition mod n."""
    if group == "Z":
        return ((p[0] + g[0]) % n,)
    return tuple(g[p[i]] for i in range(n))


def running_products(group: str, n: int, word: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """``r_t = g_1 · g_2 · … · g_t`` for every prefix of ``word``."""
    out, acc = [], None
    for g in word:
        acc = g if acc is None else compose(group, n, acc, g)
        out.append(acc)
    return out


# ----------------------------------------------------------------------------- the tasks
@dataclass(frozen=True)
class _GeneratedTask(Task):
    """Common fields of the generated tasks (splits, lengths, sizes, seed)."""

    train_length: int = 64
    """Sequence length T of the training (and validation/test) examples."""
    eval_lengths: tuple[int, ...] = ()
    """Further lengths evaluated as ``validation_len{T}``/``test_len{T}`` (length generalisation)."""
    train_size: int = 4000
    """Training examples."""
    eval_size: int = 500
    """Examples per evaluation split."""
    seed: int = 0
    """Base seed; each split draws from ``(seed, split, length)``."""

    name: ClassVar[str] = ""
    objectives: ClassVar[tuple[str, ...]] = ("causal_lm", "classification")
    lm_eval: ClassVar[str] = "teacher_forced"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    test_split: ClassVar[bool] = True
    """``test`` evaluates its own draw, not the validation one."""

    def __post_init__(self) -> None:
        if self.train_length <= 0 or any(t <= 0 for t in self.eval_lengths):
            raise SsmloraError(f"{self.name}: lengths must be positive.")
        if self.train_size <= 0 or self.eval_size <= 0:
            raise SsmloraError(f"{self.name}: train_size and eval_size must be positive.")

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return ("validation", *(f"validation_len{t}" for t in self.eval_lengths))

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is not None:
            raise SsmloraError(
                f"Task {self.name!r} is generated in code and reads no files: remove data.data_dir."
            )

    def split_length(self, split: str) -> int:
        if "_len" in split:
            return int(split.rsplit("_len", 1)[1])
        if split in ("train", "validation", "test"):
            return self.train_length
        raise SsmloraError(f"{self.name}: unknown split {split!r}.")

    def examples(self, split: str) -> list[tuple[list[str], list[str], int]]:
        """``(prompt words, target words, final class)`` per example of ``split``."""
        length = self.split_length(split)
        rng = random.Random(f"{self.name}:{self.seed}:{split}:{length}")
        size = self.train_size if split == "train" else self.eval_size
        return [self.example(rng, length) for _ in range(size)]

    def example(self, rng: random.Random, length: int) -> tuple[list[str], list[str], int]:
        raise NotImplementedError

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        rows = [
            {"text_a": " ".join(p), "text_b": None, "label": y} for p, _, y in self.examples(split)
        ]
        return datasets.Dataset.from_list(rows)

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        rows = [
            {
                "document": "",
                "prompt": " ".join(p),
                "target": " ".join(t),
                "choices": [],
                "label": -1,
                "references": [],
            }
            for p, t, _ in self.examples(split)
        ]
        return datasets.Dataset.from_list(rows)

    def vocabulary(self) -> list[str]:
        raise NotImplementedError

    def builtin_tokenizer(self) -> PreTrainedTokenizerFast:
        return word_tokenizer(self.vocabulary())


@dataclass(frozen=True)
class DFATask(_GeneratedTask):
    """DFA state tracking (the HRM paper's task): a new automaton per example, start state 0.

    Token ids: states ``0..n-1``, TABLE_SEP ``n``, symbols ``n+1..n+k``, QUERY_SEP ``n+k+1``
    (binary: ``n+3``), pad last. Sequence: transition table (``n·k`` tokens, state-major) |
    TABLE_SEP | T symbols | QUERY_SEP | final state; loss on the final state only; chance 1/n.
    """

    name: ClassVar[str] = "dfa"
    n_states: int = 4
    """Number of states n."""
    n_symbols: int = 2
    """Alphabet size k (binary in the HRM paper)."""
    kind: Literal["random", "permutation"] = "random"
    """``random`` tables (may absorb) or ``permutation`` automata (each symbol permutes)."""
    lm_metrics: ClassVar[tuple[str, ...]] = ("token_accuracy",)

    @property
    def num_labels(self) -> int:
        return self.n_states

    def vocabulary(self) -> list[str]:
        symbols = [chr(ord("a") + i) for i in range(self.n_symbols)]
        return [str(s) for s in range(self.n_states)] + ["|", *symbols, "?"]

    def example(self, rng: random.Random, length: int) -> tuple[list[str], list[str], int]:
        table = random_automaton(self.n_states, self.n_symbols, rng, self.kind)
        symbols = [rng.randrange(self.n_symbols) for _ in range(length)]
        final = run_automaton(table, symbols)[-1]
        words = [str(table[s][a]) for s in range(self.n_states) for a in range(self.n_symbols)]
        words += ["|", *(chr(ord("a") + a) for a in symbols), "?"]
        return words, [str(final)], final


@dataclass(frozen=True)
class ParityTask(_GeneratedTask):
    """Parity: bits ``b_1..b_T`` | SEP | running parities ``p_1..p_T`` (loss on all outputs, or
    on the last only with ``last_only``); classification: the parity of all bits."""

    name: ClassVar[str] = "parity"
    last_only: bool = False
    """Target only the final parity."""
    num_labels: ClassVar[int] = 2
    lm_metrics: ClassVar[tuple[str, ...]] = ("token_accuracy", "sequence_accuracy")

    def vocabulary(self) -> list[str]:
        return ["0", "1", "|"]

    def example(self, rng: random.Random, length: int) -> tuple[list[str], list[str], int]:
        bits = [rng.randrange(2) for _ in range(length)]
        parities = list(itertools.accumulate(bits, lambda a, b: a ^ b))
        target = parities[-1:] if self.last_only else parities
        return [*map(str, bits), "|"], [str(p) for p in target], parities[-1]


@dataclass(frozen=True)
class WordProblemTask(_GeneratedTask):
    """Group word problems ("The Illusion of State"): T uniform elements of S_n, A_n or Z_n, then
    SEP, then the running products (or the last only). Element ``i`` is the word ``e{i}`` in
    :func:`group_elements` order."""

    name: ClassVar[str] = "word_problem"
    group: Literal["S", "A", "Z"] = "A"
    """``S`` (symmetric), ``A`` (alternating) or ``Z`` (cyclic)."""
    n: int = 5
    """Degree (S_n, A_n) or order (Z_n)."""
    last_only: bool = False
    """Target only the product of the whole word."""
    lm_metrics: ClassVar[tuple[str, ...]] = ("token_accuracy", "sequence_accuracy")

    @property
    def elements(self) -> list[tuple[int, ...]]:
        return group_elements(self.group, self.n)

    @property
    def num_labels(self) -> int:
        return len(self.elements)

    def vocabulary(self) -> list[str]:
        return [f"e{i}" for i in range(self.num_labels)] + ["="]

    def example(self, rng: random.Random, length: int) -> tuple[list[str], list[str], int]:
        elements = self.elements
        index = {e: i for i, e in enumerate(elements)}
        word = [rng.randrange(len(elements)) for _ in range(length)]
        products = [
            index[p] for p in running_products(self.group, self.n, [elements[i] for i in word])
        ]
        target = products[-1:] if self.last_only else products
        return [*(f"e{i}" for i in word), "="], [f"e{i}" for i in target], products[-1]


@dataclass(frozen=True)
class WordProblemCSVTask(Task):
    """Group word problems from a CSV with columns ``seed,input,target`` (space-separated element
    ids; ``target`` the running products), as in ``A5_word_problem/A5=10.csv``.

    The rows are shuffled with ``seed`` and cut into train/validation/test by ``fractions``.
    """

    file: str = "A5=10.csv"
    """CSV file name inside ``data.data_dir`` (or a full path)."""
    num_elements: int = 60
    """Group order (60 for A5); element ids must lie below it."""
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train/validation/test shares of the rows."""
    seed: int = 0
    """Seed of the row shuffle."""
    last_only: bool = False
    """Target only the final product."""

    name: ClassVar[str] = "word_problem_csv"
    objectives: ClassVar[tuple[str, ...]] = ("causal_lm", "classification")
    lm_eval: ClassVar[str] = "teacher_forced"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    lm_metrics: ClassVar[tuple[str, ...]] = ("token_accuracy", "sequence_accuracy")
    test_split: ClassVar[bool] = True

    @property
    def num_labels(self) -> int:
        return self.num_elements

    def path(self, data_dir: str | None) -> Path:
        file = Path(self.file)
        if file.is_absolute() or data_dir is None:
            return file
        root = Path(data_dir)
        return root if root.is_file() else root / file

    def check_data_dir(self, data_dir: str | None) -> None:
        if not self.path(data_dir).is_file():
            raise SsmloraError(
                f"{self.name}: no CSV at {self.path(data_dir)}; set data.data_dir to its folder "
                "and data.task.file to its name (columns seed,input,target)."
            )

    def rows(self, split: str, data_dir: str | None) -> list[tuple[list[int], list[int]]]:
        with open(self.path(data_dir), newline="") as handle:
            rows = [
                ([int(x) for x in r["input"].split()], [int(x) for x in r["target"].split()])
                for r in csv.DictReader(handle)
            ]
        bad = [x for inp, tgt in rows for x in inp + tgt if not 0 <= x < self.num_elements]
        if bad:
            raise SsmloraError(
                f"{self.name}: element id {bad[0]} is outside 0..{self.num_elements - 1}; set "
                "data.task.num_elements to the group order."
            )
        random.Random(self.seed).shuffle(rows)
        n_train = int(self.fractions[0] * len(rows))
        n_val = int(self.fractions[1] * len(rows))
        bounds = {
            "train": (0, n_train),
            "validation": (n_train, n_train + n_val),
            "test": (n_train + n_val, len(rows)),
        }
        if split not in bounds:
            raise SsmloraError(f"{self.name}: unknown split {split!r}.")
        start, stop = bounds[split]
        return rows[start:stop]

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        return datasets.Dataset.from_list(
            [
                {"text_a": " ".join(f"e{i}" for i in inp), "text_b": None, "label": tgt[-1]}
                for inp, tgt in self.rows(split, data_dir)
            ]
        )

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        rows = []
        for inp, tgt in self.rows(split, data_dir):
            target = tgt[-1:] if self.last_only else tgt
            rows.append(
                {
                    "document": "",
                    "prompt": " ".join([*(f"e{i}" for i in inp), "="]),
                    "target": " ".join(f"e{i}" for i in target),
                    "choices": [],
                    "label": -1,
                    "references": [],
                }
            )
        return datasets.Dataset.from_list(rows)

    def builtin_tokenizer(self) -> PreTrainedTokenizerFast:
        return word_tokenizer([f"e{i}" for i in range(self.num_elements)] + ["="])


register_task("dfa", DFATask)
register_task("parity", ParityTask)
register_task("word_problem", WordProblemTask)
register_task("word_problem_csv", WordProblemCSVTask)
