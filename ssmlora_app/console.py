"""What the ``ssmlora`` command prints: parser errors as one line, and the libraries' noise
silenced.

A jsonargparse error is a usage dump of a hundred lines followed by a nested message (union
alternatives, given values). :func:`one_line` keeps the option and the reason; the parsers of
every subcommand print it as ``ssmlora: error: <option>: <reason> (see ssmlora fit --help)`` and
exit 2, like every other bad input.

:func:`silence_library_noise` drops what is not the user's business (library deprecations,
Lightning's cloud tips, the TPU line, a stepping-batches note, transformers' CUDA-kernel install
hints on a CPU) and says transformers' load report of a fresh task head in one plain line; what
helps (the seed, the GPU line, the fit's end, checkpoints restored) is kept.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings

import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser
from transformers.utils import logging as hf_logging

_DROPPED = (
    re.compile(r"Does not validate against any of the (Union )?(sub)?types"),
    re.compile(r"Subtypes: "),
    re.compile(r"Errors:$"),
    re.compile(r"Given value type: "),
    re.compile(r"Expected a <class '(NoneType|str|bool)'>\.?$"),
    re.compile(r"Expected a dot import path string"),
    re.compile(r"Expected a path but .* either not accessible or invalid"),
)
"""Lines of a jsonargparse message that name no problem of the user's value (the alternatives of
a union that were never meant)."""


def one_line(message: str) -> str:
    """A jsonargparse error message as one line: ``<option>: <reason>``."""
    keys: list[str] = []
    reasons: list[str] = []
    nested: tuple[str, str] | None = None
    for raw in message.splitlines():
        line = raw.strip().lstrip("-").strip()
        if not line:
            continue
        key = re.fullmatch(r'Parser key "([^"]+)":?\s*(.*)', line)
        if key:
            keys.append(key[1])
            line = key[2]
            if not line:
                continue
        given = re.fullmatch(r"Given value: NestedArg\(key='(.*)', val='(.*)'\)", line)
        if given:
            nested = (given[1], given[2])
            continue
        if line.startswith("Given value:") or any(p.match(line) for p in _DROPPED):
            continue
        reasons.append(line)
    reasons = [r for r in reasons if not r.startswith("Problem with given class_path")] or reasons
    if not reasons and nested is not None:
        reasons = [f"it has no option {nested[0]!r} (given {nested[0]}={nested[1]})"]
    text = " ".join(reasons) or " ".join(message.split())
    text = re.sub(r"Expected a typing\.Literal\[(.*?)\]\.?", r"expected one of \1,", text)
    text = re.sub(r"Expected a <class '(?:[\w.]+\.)?(\w+)'>\.?", r"expected \1,", text)
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    text = text.replace("Got value:", "got")
    return f"{'.'.join(keys)}: {text}" if keys else text


class _OneLineErrors:
    """``error()`` of jsonargparse parsers as one ``ssmlora: error:`` line and exit 2."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"ssmlora: error: {one_line(message)} (see {prog} --help)\n")
        sys.exit(2)


class CliParser(_OneLineErrors, LightningArgumentParser):
    """The parser of ``ssmlora fit|validate|test|predict``."""


class ToolParser(_OneLineErrors, ArgumentParser):
    """The parser of the tools' subcommands (``ssmlora export``, ``report``, ...)."""


_NOISE = (
    "TPU available:",
    "💡 Tip:",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "LightningCLI's args parameter is intended to run from within Python",
    "Trainer already configured with model summary callbacks",
    "exists and is not empty",  # a resume's checkpoint folder: it is meant to
    "callbacks used to create the checkpoint need to be provided",  # evaluations need none
    "The dirpath has changed from",  # an evaluation logs into <run>/<stage>; it saves nothing
    "gemm_4bit_forward from kernels-community",  # bitsandbytes on CPU: an optional faster kernel
)
"""Library messages that are not the user's business (logged or warned)."""


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
HEAD_MODULES = ("classifier", "score")
"""Top-level modules of a transformers model that are its task head (new for a new task)."""


class _TransformersNoise(logging.Filter):
    """transformers' messages: the kernel fallback hints (``install mamba_ssm``), which are about
    CUDA kernels, dropped on a CPU and said once on a GPU; the LOAD REPORT table of a model whose
    only missing weights are its fresh task head, said plainly in one line (any other report, a
    weight that should have loaded, is kept as it is)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel_hint_said = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage())
        if "falling back to its reference PyTorch implementation" in message:
            if self.kernel_hint_said or not torch.cuda.is_available():
                return False
            self.kernel_hint_said = True
            return True
        if "LOAD REPORT" in message:
            rows = re.findall(r"^(\S+)\s*\|\s*(\w+)\s*\|", message, re.MULTILINE)
            keys = [key for key, status in rows if key != "Key" and status == "MISSING"]
            if (
                keys
                and len(keys) == len(rows) - 1
                and all(key.split(".")[0] in HEAD_MODULES for key in keys)
            ):
                model = re.search(r"(\w+) LOAD REPORT", message)
                source = re.search(r"from: (.*)", message)
                record.msg = (
                    f"{model[1] if model else 'The model'}: every weight loaded from "
                    f"{source[1].strip() if source else 'the checkpoint'} except the new task head "
                    f"({', '.join(keys)}), initialised at random and trained by this run."
                )
                record.args = ()
        return True


def silence_library_noise() -> None:
    """Drop the libraries' messages that are not the user's business (process-wide, idempotent)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "bitsandbytes.backends.cpu.ops"):  # fmt: skip
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
        for handler in logger.handlers:
            if not any(isinstance(f, _DropNoise) for f in handler.filters):
                handler.addFilter(_DropNoise())
    hf_logger = hf_logging.get_logger()  # transformers' root logger, with its handler set up
    for handler in hf_logger.handlers:
        if not any(isinstance(f, _TransformersNoise) for f in handler.filters):
            handler.addFilter(_TransformersNoise())
    for noise in _NOISE:
        warnings.filterwarnings("ignore", message=f".*{re.escape(noise)}.*")
    # Deprecations inside the libraries (e.g. Lightning's pytree helper), not in the user's code.
    warnings.filterwarnings("ignore", message=r".*is deprecated.*", module=r"lightning\..*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for category in (DeprecationWarning, FutureWarning):
        for module in ("lightning", "torch", "transformers", "torchmetrics", "datasets"):
            warnings.filterwarnings("ignore", category=category, module=rf"{module}(\..*)?")
