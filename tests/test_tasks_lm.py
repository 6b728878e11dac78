"""Causal-LM formatting: the truncation policy, loss masks, the collator, and the text metrics."""

import math

import pytest
import torch

from ssmlora_app.errors import SsmloraError
from ssmlora_app.objectives.lm_data import LMCollator, LMFormat, cut_document, encode_lm_example
from ssmlora_app.tasks.metrics import (
    RougeF,
    TeacherForced,
    TokenF1,
    teacher_forced_stats,
    token_f1,
)
from ssmlora_app.tasks.vocab import byte_tokenizer


def test_cut_document_policies():
    ids = list(range(10))
    assert cut_document(ids, 4, "middle") == [0, 1, 8, 9]
    assert cut_document(ids, 5, "middle") == [0, 1, 7, 8, 9]
    assert cut_document(ids, 3, "tail") == [7, 8, 9]
    assert cut_document(ids, 3, "head") == [0, 1, 2]
    assert cut_document(ids, 20, "middle") == ids
    assert cut_document(ids, 0, "middle") == []
    with pytest.raises(SsmloraError, match="truncation"):
        cut_document(ids, 3, "sides")


def row(document="", prompt="", target="", choices=(), label=-1):
    return {
        "document": document,
        "prompt": prompt,
        "target": target,
        "choices": list(choices),
        "label": label,
        "references": [target],
    }


@pytest.mark.parametrize("policy", ["middle", "tail", "head"])
def test_question_and_options_are_never_cut(policy):
    tok = byte_tokenizer()
    doc = "".join(chr(ord("a") + i % 26) for i in range(300))
    r = row(doc, "\nQ: which?\n(A) x (B) y\nAnswer:", " yy", [" xxxxx", " yy"], 1)
    out = encode_lm_example(r, tok, LMFormat(max_length=64, truncation=policy))
    prompt = list(r["prompt"].encode())
    for seq, option in zip(out["choice_input_ids"], [" xxxxx", " yy"], strict=True):
        assert len(seq) <= 64
        assert seq[-len(option) :] == list(option.encode())
        assert seq[-len(option) - len(prompt) : -len(option)] == prompt
    context = out["prompt_ids"]
    document = context[: len(context) - len(prompt)]
    # the document keeps exactly the room left by the prompt and the longest option
    assert len(document) == 64 - len(prompt) - len(" xxxxx")
    expected = cut_document(list(doc.encode()), len(document), policy)
    assert document == expected
    # training: loss only on the gold option
    labels = out["labels"]
    assert [x for x in labels if x != -100] == list(b" yy")
    assert out["input_ids"][: len(context)] == context
    # the same document view in training and evaluation
    assert out["input_ids"][: len(document)] == document


def test_too_long_prompt_is_a_clear_error():
    with pytest.raises(SsmloraError, match="never cut"):
        encode_lm_example(row("doc", "x" * 50, " a"), byte_tokenizer(), LMFormat(max_length=40))


def test_generation_target_room_and_eos():
    tok = byte_tokenizer()
    fmt = LMFormat(max_length=32, answer_room=8)
    out = encode_lm_example(row("d" * 100, " Q?", " a long summary"), tok, fmt)
    target = [x for x in out["labels"] if x != -100]
    assert target == list(b" a long ")  # cut at max_new_tokens (EOS falls off)
    assert len(out["prompt_ids"]) == 32 - 8
    short = encode_lm_example(row("d", " Q?", " ok"), tok, fmt)
    assert [x for x in short["labels"] if x != -100] == [*b" ok", tok.eos_token_id]


def test_collator_pads_right_and_masks():
    tok = byte_tokenizer()
    rows = [
        encode_lm_example(row("ab", "?", " y", [" n", " y"], 1), tok, LMFormat(16)),
        encode_lm_example(row("abcdef", "?", " n", [" n", " y"], 0), tok, LMFormat(16)),
    ]
    for r, label in zip(rows, [1, 0], strict=True):
        r["label"] = label
    batch = LMCollator(tok.pad_token_id, choices=True)(rows)
    assert batch.input_ids.shape == batch.labels.shape == (2, 9)
    assert batch.attention_mask.sum(1).tolist() == [5, 9]
    assert batch.input_ids[0, 5:].eq(tok.pad_token_id).all()
    assert batch.labels[0, 5:].eq(-100).all()
    choices = batch.choices
    assert choices.input_ids.shape[0] == 4 and choices.num_choices.tolist() == [2, 2]
    assert choices.attention_mask.sum(1).tolist() == [5, 5, 9, 9]  # context + option
    assert batch.gold.tolist() == [1, 0]
    assert batch.prompts is None and batch.references is None  # what choice does not read


def test_token_f1_hand_computed():
    # pred tokens: [cat, sat, mat]; ref: [cat, sat, on, mat, today] -> P=1, R=3/5, F1=0.75
    assert token_f1("The cat sat, a mat!", "cat sat on the mat today") == pytest.approx(0.75)
    assert token_f1("dog", "cat") == 0.0
    metric = TokenF1()
    metric.update(["cat", "dog"], [["a cat", "bird"], ["cat"]])
    assert float(metric.compute()) == pytest.approx(0.5)


def test_rouge_hand_computed():
    # pred: the cat sat on the mat (6), ref: the cat is on the mat (6)
    # unigram overlap 5 -> R1 = 5/6; bigrams overlap {the cat, on the, the mat} = 3/5 -> R2 = 0.6
    # LCS = the cat on the mat = 5 -> RL = 5/6
    preds, refs = ["the cat sat on the mat"], [["the cat is on the mat"]]
    expected = {"rouge1": 5 / 6, "rouge2": 0.6, "rougeL": 5 / 6}
    for key, value in expected.items():
        metric = RougeF(key)
        metric.update(preds, refs)
        assert float(metric.compute()) == pytest.approx(value, abs=1e-4)


def test_bits_per_byte_is_the_mean_nll_in_bits():
    # uniform logits over 256 bytes: exactly 8 bits per predicted byte
    logits = torch.zeros(2, 5, 256)
    labels = torch.tensor([[-100, 1, 2, 3, 4], [-100, 5, 6, -100, -100]])
    nll, correct, tokens = teacher_forced_stats(logits, labels)
    assert tokens.tolist() == [4, 2]
    metric = TeacherForced("bits_per_byte")
    metric.update(nll, correct, tokens)
    assert float(metric.compute()) == pytest.approx(8.0, rel=1e-5)
    # a peaked distribution: p(target) = 1/2 everywhere -> 1 bit per byte
    logits = torch.full((1, 3, 4), -math.inf)
    logits[..., 0] = logits[..., 1] = 0.0
    nll, _, tokens = teacher_forced_stats(logits, torch.tensor([[-100, 1, 0]]))
    assert float(nll.sum() / tokens.sum() / math.log(2)) == pytest.approx(1.0)


def test_token_and_sequence_accuracy():
    logits = torch.zeros(2, 4, 3)
    logits[0, :, 1] = 1  # row 0 always predicts 1
    logits[1, :, 2] = 1  # row 1 always predicts 2
    labels = torch.tensor([[-100, 1, 1, 1], [-100, -100, 2, 0]])
    nll, correct, tokens = teacher_forced_stats(logits, labels)
    token, sequence = TeacherForced("token_accuracy"), TeacherForced("sequence_accuracy")
    for m in (token, sequence):
        m.update(nll, correct, tokens)
    assert float(token.compute()) == pytest.approx(4 / 5)
    assert float(sequence.compute()) == pytest.approx(1 / 2)
