"""Tokenizers from a hub id or a local folder."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer from a hub id or folder; a folder with only ``vocab.json`` + ``merges.txt``
    (byte-level BPE, e.g. RoBERTa/GPT-2) loads as a RoBERTa tokenizer."""
    path = Path(source)
    if path.is_dir():
        known = ("tokenizer.json", "tokenizer_config.json", "config.json")
        if not any((path / name).exists() for name in known):
            if (path / "vocab.json").exists() and (path / "merges.txt").exists():
                from transformers import RobertaTokenizerFast

                return RobertaTokenizerFast(
                    vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt")
                )
            raise SsmloraError(
                f"Tokenizer folder {path} has none of {known} nor vocab.json + merges.txt."
            )
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise SsmloraError(
            f"Cannot load tokenizer {source!r}: {err}. Give a hub id (with network or a filled "
            "HF cache) or a local folder."
        ) from None
