"""L-Eval exam scoring and option parsing: the real closed-ended files, hand-written Coursera/TPO
layouts, and L-Eval's published exam scores where its prediction files are present."""

import json

import pytest

from ssmlora_app.scoring import ScoringError
from ssmlora_app.scoring.leval import (
    exam_accuracy,
    exam_questions,
    exam_score,
    gold_letters,
    parse_options,
    response_letters,
)


def _documents(shared_data, name):
    path = shared_data / "longctx" / "leval" / "closed-ended" / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_quality_instruction_parses(shared_data):
    docs = _documents(shared_data, "quality.jsonl")
    questions = [q for doc in docs for q in exam_questions(doc)]
    assert len(docs) == 15 and len(questions) == 202  # the L-Eval paper's QuALITY counts
    assert all(len(q.options) == 4 and q.question for q in questions)
    outputs = [o for doc in docs for o in doc["outputs"]]
    for q, output in zip(questions, outputs):
        assert output.lstrip().startswith(f"({q.gold})")  # the letter the output starts with
        # the output repeats the right option's text
        assert output.split(")", 1)[1].strip()[:20] == q.options["ABCD".index(q.gold)][:20]


@pytest.mark.parametrize(
    ("name", "count"),
    [("gsm100.jsonl", 100), ("sci_fi.jsonl", 64), ("topic_retrieval_longchat.jsonl", 150)],
)
def test_files_without_options_say_so(shared_data, name, count):
    """Numeric (GSM), true/false (sci-fi) and topic answers have no options: every instruction
    says so clearly instead of parsing into something."""
    docs = _documents(shared_data, name)
    instructions = [i for doc in docs for i in doc["instructions"]]
    assert len(instructions) == count
    for instruction in instructions:
        with pytest.raises(ScoringError, match="no options: no line starts with"):
            parse_options(instruction)


def test_option_layouts():
    """QuALITY writes ``(A) …`` (with or without a space before, one per line); Coursera and TPO
    write ``A. …``; Coursera questions start ``Question 1.``."""
    quality = "How many sentences?\n\n(A) 256\n(B) 450\n(C) 344\n(D) 406"
    assert parse_options(quality) == ("How many sentences?", ["256", "450", "344", "406"])
    spaced = "Why?\n\n (A) one. \n (B) two \n (C) three\n (D) four "
    assert parse_options(spaced) == ("Why?", ["one.", "two", "three", "four"])
    coursera = (
        "Question 2. Which techniques reduce memory?\nA. Mini-batches\nB. Dropout\n"
        "C. Weight sharing\nD. Fewer layers"
    )
    question, options = parse_options(coursera)
    assert question == "Question 2. Which techniques reduce memory?"
    assert options == ["Mini-batches", "Dropout", "Weight sharing", "Fewer layers"]
    tpo = "why did she go to the barn\nA. to study\nB. to earn money\nC. to paint\nD. to meet"
    assert parse_options(tpo)[1] == ["to study", "to earn money", "to paint", "to meet"]
    doc = {"instructions": [coursera, tpo], "outputs": ["AC", "A"]}
    assert [q.gold for q in exam_questions(doc)] == ["AC", "A"]


def test_bad_options_and_gold_are_clear_errors():
    with pytest.raises(ScoringError, match="out of order: A, C"):
        parse_options("Q\n(A) x\n(C) y")
    with pytest.raises(ScoringError, match="only one option"):
        parse_options("Q\nA. x")
    with pytest.raises(ScoringError, match="no answer letter"):
        gold_letters("True [fact: False]")
    with pytest.raises(ScoringError, match="gold letter D has no option"):
        exam_questions({"instructions": ["Q\nA. x\nB. y"], "outputs": ["D"]})


def test_gold_letters_as_leval_reads_them():
    assert gold_letters("(B) Their subconscious knew …") == "B"
    assert gold_letters("ABD") == "ABD"
    assert gold_letters("(C) Tr'en\n") == "C"


@pytest.mark.parametrize(
    ("response", "multiple", "expected"),
    [
        ("", False, "None"),  # empty: never right
        ("B", False, "B"),
        ("BC", False, "BC"),  # a piece of "ABCD" is kept as it is
        ("The answer is (C) because …", False, "C"),  # first of A-D in the response
        ("Answer: D", False, "A"),  # the 'A' of "Answer" is the first of A-D: L-Eval reads A
        ("no letter here", False, "A"),  # …and guesses A when there is none
        ("ACD are right", True, "ACD"),  # leading run of letters
        ("The right options are A. and C) here", True, "AC"),  # standalone letters
        ("B\nQuestion 3. A. x", True, "B"),  # nothing after "Question" counts
        ("I pick BD!", True, "BD"),  # else the first run of letters
    ],
)
def test_response_letters(response, multiple, expected):
    assert response_letters(response, multiple=multiple) == expected


def test_no_guess_when_asked():
    assert response_letters("no letter here", guess=False) == ""
    assert exam_score("", "A") == 0.0


def test_exam_score_and_accuracy_by_hand():
    assert exam_score("AC", "AC") == 1.0
    assert exam_score("A", "AC") == 0.25  # some of the right options
    assert exam_score("AB", "AC") == 0.0  # a wrong one among them
    assert exam_score("None", "A") == 0.0
    # 1 + 0.25 + 0 + 1 = 2.25 over 4 questions = 56.25 %
    result = exam_accuracy(["AC", "A", "B", "D"], ["AC", "AC", "C", "D"])
    assert result == {"exact_match": 56.25, "correct": 2, "partial": 1, "total": 4}
    with pytest.raises(ScoringError, match="3 responses for 4 questions"):
        exam_accuracy(["A"] * 3, ["A"] * 4)


# L-Eval's published exam scores (its leaderboard; reproduced by running its own
# Evaluation/auto_eval.py parsers and em.py on OpenLMLab/LEval@cd34b050
# Predictions/exam_eval/<model>/<task>.pred.jsonl).
LEVAL_PUBLISHED = {
    ("turbo-16k-0613", "quality"): 61.386138613861384,
    ("turbo-16k-0613", "coursera"): 63.51744186046512,
    ("turbo-16k-0613", "tpo"): 78.43866171003718,
    ("gpt4-32k", "quality"): 82.17821782178218,
    ("gpt4-32k", "coursera"): 75.5813953488372,
    ("gpt4-32k", "tpo"): 84.38661710037175,
    ("Claude-100k", "quality"): 73.76237623762377,
    ("Claude-100k", "coursera"): 60.02906976744186,
    ("Claude-100k", "tpo"): 84.01486988847584,
}


@pytest.mark.parametrize(("model", "task"), sorted(LEVAL_PUBLISHED))
def test_leval_published_exam_scores(shared_data, model, task):
    """Needs L-Eval's prediction files under longctx/leval/predictions/exam_eval/ (skipped when
    the shared data folder does not have them)."""
    path = shared_data / "longctx" / "leval" / "predictions" / "exam_eval" / model
    path = path / f"{task}.pred.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    key = next(k for k in rows[0] if "_pred" in k)
    responses = [response_letters(r[key], multiple=task == "coursera") for r in rows]
    result = exam_accuracy(responses, [gold_letters(r["gt"]) for r in rows])
    assert result["exact_match"] == pytest.approx(LEVAL_PUBLISHED[model, task], abs=1e-9)
