"""Tokenizers that tasks bring themselves: word-level (synthetic tasks) and byte-level (V=256)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel steps use)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def word_tokenizer(words: list[str], pad: str = "<pad>") -> PreTrainedTokenizerFast:
    """Whitespace-split words with ids in list order, ``pad`` last; no BOS/EOS, so a synthetic
    layout (the DFA token ids of the HRM paper's state-tracking task) reaches the model unchanged."""
    vocab = {w: i for i, w in enumerate([*words, pad])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=pad))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, unk_token=pad)


def byte_tokenizer(specials: bool = True) -> PreTrainedTokenizerFast:
    """UTF-8 bytes as tokens: byte ``b`` has id ``b``. With ``specials``, ``<eos>`` = 256 and
    ``<pad>`` = 257 follow (text tasks on a tiny model); without, V = 256 exactly and byte 0 pads
    (byte LM: pads never reach the loss)."""
    to_unicode = bytes_to_unicode()
    vocab = {to_unicode[b]: b for b in range(256)}
    extra = {}
    if specials:
        vocab.update({"<eos>": 256, "<pad>": 257})
        extra = {"eos_token": "<eos>", "pad_token": "<pad>"}
    else:
        extra = {"pad_token": to_unicode[0]}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **extra)
