"""ROUGE: torchmetrics' ROUGEScore (what :mod:`ssmlora_app.scoring.rouge` uses) against Google's
``rouge_score`` (what HF ``evaluate`` calls) on real summaries: L-Eval's reference summaries, each
scored against the next one of the same document."""

import itertools
import json

import numpy as np
import pytest
import torch
from torchmetrics.functional.text import rouge_score as tm_rouge

from ssmlora_app.scoring import ScoringError
from ssmlora_app.scoring.rouge import ROUGE_KEYS, rouge_f

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
scoring = pytest.importorskip("rouge_score.scoring")


@pytest.fixture(scope="module")
def summary_pairs(shared_data):
    folder = shared_data / "longctx" / "leval" / "open-ended"
    files = sorted(folder.glob("*summ*.jsonl"))
    if not files:
        pytest.skip(f"no L-Eval summary files in {folder}")
    pairs = []
    for path in files:
        for line in path.read_text().splitlines():
            outputs = json.loads(line)["outputs"]
            pairs += list(itertools.pairwise(outputs))
    return pairs


@pytest.mark.slow
def test_equals_rouge_score_per_summary(summary_pairs):
    assert len(summary_pairs) == 274
    google = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=False)
    for prediction, reference in summary_pairs[::7]:
        theirs = google.score(reference, prediction)
        ours = tm_rouge(prediction, reference, rouge_keys=ROUGE_KEYS, use_stemmer=False)
        for key in ROUGE_KEYS:
            assert ours[f"{key}_fmeasure"].item() == pytest.approx(theirs[key].fmeasure, abs=1e-6)


@pytest.mark.slow
def test_corpus_mean_and_evaluates_bootstrap(summary_pairs):
    google = rouge_scorer.RougeScorer([*ROUGE_KEYS, "rougeLsum"], use_stemmer=False)
    per_summary = [google.score(r, p) for p, r in summary_pairs]
    ours = rouge_f([p for p, _ in summary_pairs], [r for _, r in summary_pairs])
    for key in ROUGE_KEYS:
        mean = float(np.mean([s[key].fmeasure for s in per_summary]))
        assert ours[key] == pytest.approx(mean, abs=1e-6)
    # what evaluate reports: the bootstrap median of means, close to the mean but not equal
    np.random.seed(0)
    aggregator = scoring.BootstrapAggregator()
    for s in per_summary:
        aggregator.add_scores(s)
    mid = aggregator.aggregate()
    for key in ROUGE_KEYS:
        assert mid[key].mid.fmeasure == pytest.approx(ours[key], abs=2e-3)
    # without newlines (none of these summaries has one) rougeLsum is rougeL
    assert not any("\n" in p or "\n" in r for p, r in summary_pairs)
    for s in per_summary:
        assert s["rougeLsum"].fmeasure == pytest.approx(s["rougeL"].fmeasure, abs=1e-12)


def test_multi_reference_best_per_key_as_score_multi():
    prediction = "the cat sat on the mat today"
    references = ["the cat sat", "a cat was on the mat today and yesterday"]
    google = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=False)
    theirs = google.score_multi(references, prediction)
    ours = rouge_f([prediction], [references])
    for key in ROUGE_KEYS:
        assert ours[key] == pytest.approx(theirs[key].fmeasure, abs=1e-6)


def test_hand_computed_and_errors():
    # "the cat sat" vs "the cat sat down": ROUGE-1 P 3/3 R 3/4 -> F 6/7; ROUGE-2 2/2, 2/3 -> 4/5
    out = rouge_f(["The cat sat."], ["the cat sat down"])
    assert out == pytest.approx({"rouge1": 6 / 7, "rouge2": 0.8, "rougeL": 6 / 7}, abs=1e-6)
    assert torch.isclose(torch.tensor(out["rougeL"]), torch.tensor(6 / 7))
    with pytest.raises(ScoringError, match="2 predictions for 1 references"):
        rouge_f(["a", "b"], ["a"])
    with pytest.raises(ScoringError, match="without a reference"):
        rouge_f(["a"], [[]])
