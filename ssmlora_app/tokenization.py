"""Tokenizers from a hub id, a local folder or a GGUF file, and the checks that they are real.

A tokenizer that loads but is wrong fails silently: every example becomes a handful of special
tokens and a head that learns the label prior still "trains". So a folder loads through
``from_pretrained`` of the class that really reads its files, and a text task checks, before any
training, that the tokenizer has a plausible vocabulary and turns a sample of the text into
ordinary tokens (:func:`check_tokenizer`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError

MIN_VOCAB = 20
"""Fewer tokens than this is no text tokenizer (the broken load of a RoBERTa folder gave 5; a
character-level one has dozens)."""

MAX_UNKNOWN_SHARE = 0.5
"""Refuse a tokenizer that maps more than this share of a text sample to unknown/special tokens."""


def check_source(source: str, what: str) -> None:
    """:class:`SsmloraError` when ``source`` is a local path (absolute, relative to ``.``, or
    deeper than a hub id's ``owner/name``) that does not exist: otherwise the hub would be asked
    for it and answer about repository ids."""
    local = source.startswith(("/", "./", "../", "~", "$")) or source.count("/") > 1
    if (local or "\\" in source) and not Path(source).expanduser().exists():
        fetch = " `make weights` fetches it;" if "ssmlora/weights" in source else ""
        raise SsmloraError(
            f"{what} {source!r}: no such folder here;{fetch} a hub id is 'name' or 'owner/name'."
        )


def load_tokenizer(
    source: str, trust_remote_code: bool = False, gguf_file: str | None = None
) -> PreTrainedTokenizerBase:
    """A tokenizer from a hub id or folder (``tokenizer.json``/``tokenizer_config.json``, or only
    ``vocab.json`` + ``merges.txt``: a byte-level BPE read as RoBERTa's), or from the GGUF file
    ``gguf_file`` inside that folder or hub repository (needs the ``gguf`` package)."""
    check_source(source, "Tokenizer")
    path = Path(source).expanduser()
    if gguf_file is not None:
        return _from_gguf(str(path) if path.is_dir() else source, gguf_file)
    if path.is_dir():
        known = ("tokenizer.json", "tokenizer_config.json", "config.json")
        if not any((path / name).exists() for name in known):
            if (path / "vocab.json").exists() and (path / "merges.txt").exists():
                # RobertaTokenizer's __init__ takes the vocabulary itself (vocab=, merges=), not
                # file names: keywords such as vocab_file= are swallowed by **kwargs and leave a
                # 5-token vocabulary. from_pretrained maps the files to the right arguments.
                from transformers import RobertaTokenizer

                return RobertaTokenizer.from_pretrained(str(path))
            raise SsmloraError(
                f"Tokenizer folder {path} has none of {known} nor vocab.json + merges.txt."
            )
        source = str(path)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise SsmloraError(
            f"Cannot load tokenizer {source!r}: {_first_line(err)}. Give a hub id (with network "
            "or a filled HF cache) or a local folder."
        ) from None


def _from_gguf(source: str, gguf_file: str) -> PreTrainedTokenizerBase:
    require_gguf()
    try:
        return AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    except (OSError, ValueError) as err:
        raise SsmloraError(
            f"Cannot load the tokenizer of {gguf_file!r} in {source!r}: {_first_line(err)}."
        ) from None


def require_gguf() -> None:
    """Raise a one-line error when the ``gguf`` package (transformers' GGUF reader) is missing."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SsmloraError(
            "Loading a GGUF checkpoint (model.backbone.gguf_file) needs the gguf package: "
            "pip install gguf (or pip install 'ssmlora[gguf]')."
        ) from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def id_space(tokenizer: PreTrainedTokenizerBase) -> int:
    """One more than the largest id the tokenizer can emit: the embedding rows a model needs.

    Not ``len(tokenizer)``, which counts distinct tokens: RoBERTa's vocabulary has gaps, so
    ``len`` is 50262 while ``<mask>`` is id 50264 (embedding size 50265)."""
    ids = list(tokenizer.get_vocab().values()) + [
        i for i in tokenizer.all_special_ids if i is not None
    ]
    return max(ids) + 1


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], where: str) -> None:
    """Refuse, with one line, a tokenizer that cannot be the right one for this text.

    ``texts``: a sample of the task's text (e.g. the first training examples); ``where`` names it
    in the message. Raises :class:`SsmloraError` when the vocabulary has fewer than
    :data:`MIN_VOCAB` tokens, or when more than :data:`MAX_UNKNOWN_SHARE` of the sample's tokens
    are unknown or special tokens (a tokenizer that did not load its vocabulary)."""
    size = len(tokenizer)
    if size < MIN_VOCAB:
        raise SsmloraError(
            f"The tokenizer {_name(tokenizer)} has only {size} tokens: its vocabulary did not load "
            "(a text tokenizer has thousands). Check model.backbone.tokenizer / name_or_path."
        )
    special = set(tokenizer.all_special_ids)
    if tokenizer.unk_token_id is not None:
        special.add(tokenizer.unk_token_id)
    total = ordinary = 0
    for text in texts:
        if not text:
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        total += len(ids)
        ordinary += sum(i not in special for i in ids)
    if total and (total - ordinary) / total > MAX_UNKNOWN_SHARE:
        raise SsmloraError(
            f"The tokenizer {_name(tokenizer)} maps {total - ordinary} of {total} tokens of "
            f"{where} to unknown or special tokens: it is not a tokenizer for this text. Check "
            "model.backbone.tokenizer / name_or_path."
        )


def _name(tokenizer: PreTrainedTokenizerBase) -> str:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return repr(name)
