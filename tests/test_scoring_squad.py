"""SQuAD v1.1/v2.0 scores against the official evaluators' own output, and the short-answer fix.

Reference numbers come from running the official scripts unchanged (they are not in the
repository):

- v1.1: ``python evaluate-v1.1.py dev-v1.1.json predictions-v1.1/<file>.json`` with the official
  v1.1 script (read in csarron/QAModels@5bc8b9a1 ``evaluate-v1.1.py``);
- v2.0: ``python evaluate-v2.0.py tests/data/squad_v2/dev.json tests/data/squad_v2/pred.json
  -n tests/data/squad_v2/na_prob.json [-t 0.5]`` with rajpurkar/SQuAD-explorer@eee5fdbf
  ``evaluate-v2.0.py``.
"""

import json
from pathlib import Path

import pytest
import torch
from torchmetrics.text import SQuAD

from ssmlora_app.scoring import ScoringError
from ssmlora_app.scoring.short_answer import (
    answer_tokens,
    best_over_references,
    short_answer_exact,
    short_answer_f1,
)
from ssmlora_app.scoring.squad import (
    answers_from_squad,
    exact_match,
    f1_v1,
    f1_v2,
    normalize_answer,
    score_v1,
    score_v2,
)

V2 = Path(__file__).parent / "data" / "squad_v2"

# evaluate-v1.1.py's printed output on the real dev set and the two leaderboard prediction files.
OFFICIAL_V1 = {
    "bert_ensemble_google.json": (86.20624408703878, 92.19557978351145),
    "logistic_regression_baseline_stanford.json": (40.14191106906339, 50.98153647324461),
}


@pytest.fixture(scope="module")
def squad_v1_dev(shared_data) -> dict[str, list[str]]:
    path = shared_data / "squad" / "dev-v1.1.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = json.loads(path.read_text())
    assert data["version"] == "1.1"
    return answers_from_squad(data["data"])


@pytest.mark.parametrize("name", sorted(OFFICIAL_V1))
def test_v1_equals_official_on_real_predictions(shared_data, squad_v1_dev, name):
    predictions = json.loads((shared_data / "squad" / "predictions-v1.1" / name).read_text())
    result = score_v1(squad_v1_dev, predictions)
    em, f1 = OFFICIAL_V1[name]
    assert result["exact_match"] == pytest.approx(em, abs=1e-9)
    assert result["f1"] == pytest.approx(f1, abs=1e-9)
    assert len(squad_v1_dev) == 10570
    # the baseline file lacks 13 dev ids (scored 0, as the official script does)
    assert result["missing"] == (13 if name.startswith("logistic") else 0)


@pytest.mark.slow
def test_v1_equals_torchmetrics_squad(shared_data, squad_v1_dev):
    """An independent implementation of v1.1 (torchmetrics.text.SQuAD) on the BERT predictions."""
    predictions = json.loads(
        (shared_data / "squad" / "predictions-v1.1" / "bert_ensemble_google.json").read_text()
    )
    metric = SQuAD()
    preds = [{"prediction_text": predictions[q], "id": q} for q in squad_v1_dev]
    target = [
        {"answers": {"answer_start": [0] * len(a), "text": a}, "id": q}
        for q, a in squad_v1_dev.items()
    ]
    theirs = metric(preds, target)
    ours = score_v1(squad_v1_dev, predictions)
    assert ours["exact_match"] == pytest.approx(theirs["exact_match"].item(), abs=1e-3)
    assert ours["f1"] == pytest.approx(theirs["f1"].item(), abs=1e-3)


def _v2_fixture():
    data = json.loads((V2 / "dev.json").read_text())
    predictions = json.loads((V2 / "pred.json").read_text())
    na_probs = json.loads((V2 / "na_prob.json").read_text())
    return answers_from_squad(data["data"]), predictions, na_probs


# Hand computation for the fixture (q4, q5 unanswerable; q6's gold "A" normalises to nothing, so
# the official v2.0 rule makes its gold "" and the empty prediction right):
#   q1 "the Denver team" vs "Denver Broncos": EM 0, F1 = 2*(1/2*1/2)/(1/2+1/2) = 0.5
#   q2 "in 1990" vs "1990": EM 0, F1 = 2*(1/2*1)/(3/2) = 2/3
#   q3 EM 1 F1 1; q4 "" on unanswerable: 1 1; q5 an answer on unanswerable: 0 0; q6: 1 1
#   exact = 3/6 = 50; f1 = (0.5 + 2/3 + 1 + 1 + 0 + 1)/6 = 69.444...
#   HasAns (q1 q2 q3 q6): exact 2/4 = 50, f1 (0.5 + 2/3 + 2)/4 = 79.1666...; NoAns: 50, 50
#   best threshold, questions by no-answer probability q3 .05, q1 .1, q2 .3, q5 .6, q6 .7, q4 .9,
#   starting from 2 (every question abstains): EM 2 -> 3 (q3) -> 3 -> 3 -> 2 (q5) -> 3 -> 3, best
#   3/6 = 50 at 0.05; F1 2 -> 3 -> 3.5 -> 4.1667 (q2, best, 0.3) -> 3.1667 -> 4.1667 -> 4.1667.
#   With -t 0.5, q5 q6 q4 abstain: HasAns exact 1/4 = 25, f1 (0.5 + 2/3 + 1 + 0)/4 = 54.1666...,
#   NoAns 100/100.
OFFICIAL_V2 = {
    "exact": 50.0,
    "f1": 69.44444444444444,
    "total": 6,
    "HasAns_exact": 50.0,
    "HasAns_f1": 79.16666666666666,
    "HasAns_total": 4,
    "NoAns_exact": 50.0,
    "NoAns_f1": 50.0,
    "NoAns_total": 2,
    "best_exact": 50.0,
    "best_exact_thresh": 0.05,
    "best_f1": 69.44444444444444,
    "best_f1_thresh": 0.3,
}


def test_v2_equals_official_on_fixture():
    answers, predictions, na_probs = _v2_fixture()
    assert score_v2(answers, predictions, na_probs) == pytest.approx(OFFICIAL_V2, abs=1e-9)


def test_v2_threshold_equals_official():
    answers, predictions, na_probs = _v2_fixture()
    result = score_v2(answers, predictions, na_probs, na_prob_thresh=0.5)
    assert result == pytest.approx(
        OFFICIAL_V2
        | {"HasAns_exact": 25.0, "HasAns_f1": 54.166666666666664}
        | {"NoAns_exact": 100.0, "NoAns_f1": 100.0},
        abs=1e-9,
    )


def test_v2_without_na_probs_has_no_best_threshold():
    answers, predictions, _ = _v2_fixture()
    result = score_v2(answers, predictions)
    assert "best_exact" not in result
    assert result["exact"] == 50.0 and result["HasAns_f1"] == pytest.approx(79.16666666666666)


def test_v2_missing_prediction_or_probability_is_a_clear_error():
    answers, predictions, na_probs = _v2_fixture()
    with pytest.raises(ScoringError, match="no prediction for question 'q2'"):
        score_v2(answers, {k: v for k, v in predictions.items() if k != "q2"})
    with pytest.raises(ScoringError, match="no-answer probability"):
        score_v2(answers, predictions, {k: v for k, v in na_probs.items() if k != "q5"})


def test_normalisation_and_per_answer_scores():
    assert normalize_answer("The  Broncos!") == "broncos"
    assert exact_match("Santa Clara, California.", "santa clara california") == 1
    assert f1_v1("in 1990", "1990") == pytest.approx(2 / 3)
    # v1.1: nothing shared is 0, even for two answers that normalise to nothing; v2.0: 1
    assert f1_v1("", "A") == 0.0 and exact_match("", "A") == 1
    assert f1_v2("", "A") == 1.0 and f1_v2("", "1990") == 0.0


def test_v1_counts_missing_predictions_as_wrong():
    answers = {"a": ["Denver Broncos"], "b": ["1990"]}
    result = score_v1(answers, {"a": "Broncos", "zzz": "ignored"})
    assert result == {"exact_match": 0.0, "f1": pytest.approx(100 * (2 / 3) / 2), "missing": 1}


def test_short_answer_does_not_erase_letters():
    """Issue 16: gold "A" (an option letter) against an empty prediction scores 0, not 1."""
    assert answer_tokens("A") == ["a"] and answer_tokens("(A).") == ["a"]
    assert answer_tokens("The answer") == ["answer"]  # articles beside words still go
    assert short_answer_f1("", "A") == 0.0 and short_answer_exact("", "A") == 0.0
    assert short_answer_f1("A", "A") == 1.0 and short_answer_exact("a)", "A") == 1.0
    assert short_answer_f1("B", "A") == 0.0
    assert short_answer_f1("", "") == 1.0  # both abstain
    assert short_answer_f1("the", "The") == 1.0
    # elsewhere it is SQuAD's F1
    assert short_answer_f1("in 1990", "1990") == pytest.approx(f1_v2("in 1990", "1990"))
    assert best_over_references(short_answer_f1, "", ["A", "a"]) == 0.0
    assert best_over_references(short_answer_exact, "A", ["B", "A"]) == 1.0


def test_short_answer_mean_over_a_letter_set_beats_the_squad_trap():
    """A model that outputs nothing on four-option letters: SQuAD's v2.0 F1 calls it perfect on
    the 'A' questions; the fixed F1 gives 0 everywhere."""
    golds = ["A", "B", "A", "C"]
    squad = torch.tensor([f1_v2("", g) for g in golds]).mean().item()
    fixed = torch.tensor([short_answer_f1("", g) for g in golds]).mean().item()
    assert squad == 0.5 and fixed == 0.0
