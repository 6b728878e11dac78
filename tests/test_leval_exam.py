"""L-Eval's closed-ended files beyond QuALITY: every layout of the shared files and hand-written
Coursera / TPO files, answered by generation (``leval_exam``) and scored as L-Eval scores them —
letter sets with the 0.25 partial credit, GSM numbers, sci-fi judgements, topic names — and TPO's
``A. …`` options with the likelihood-scored ``quality`` task."""

import pytest

from ssmlora_app.data import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.scoring.leval_answers import answer_score, judge_reference, math_answer
from ssmlora_app.tasks import LEvalExamTask, QualityTask
from ssmlora_app.tasks.metrics import build_metrics
from tests.generation_data import write_leval


@pytest.fixture(scope="module")
def leval(shared_data):
    path = shared_data / "longctx" / "leval"
    if not (path / "closed-ended" / "quality.jsonl").is_file():
        pytest.skip(f"{path} is absent")
    return path


def _all_rows(task, data_dir):
    return [r for split in ("train", "validation", "test") for r in task.load_lm_split(split, str(data_dir))]  # fmt: skip


def exam_metrics(options: dict, answers: list[str], outputs: list[str]) -> dict[str, float]:
    """The task's metrics as the objective builds them, over two batches."""
    metrics = build_metrics(("exam_score", "exam_correct"), 1, "val", options=options)
    half = len(answers) // 2
    metrics.update(answers[:half], [[o] for o in outputs[:half]])
    metrics.update(answers[half:], [[o] for o in outputs[half:]])
    return {k.removeprefix("val/"): float(v) for k, v in metrics.compute().items()}


@pytest.mark.parametrize(
    ("name", "answer", "questions", "documents"),
    [("quality", "letters", 202, 15), ("gsm100", "number", 100, 1), ("sci_fi", "judge", 64, 7)],
)
def test_shared_files_are_read_by_their_layout(leval, name, answer, questions, documents):
    task = LEvalExamTask(file=f"closed-ended/{name}.jsonl")
    assert task.metric_options(str(leval)) == {"answer": answer, "multiple": False}
    assert len(task.documents(str(leval))) == documents
    rows = _all_rows(task, leval)
    assert len(rows) == questions  # the splits share them out, none lost or repeated
    assert len({(r["document"], r["prompt"]) for r in rows}) == questions
    first = rows[0]
    assert first["prompt"].startswith("\n\nQuestion: ") and first["prompt"].endswith("\nAnswer:")
    if answer == "letters":  # quality: the target is the letter, the reference the output
        assert {r["target"] for r in rows} <= {" A", " B", " C", " D"}
        assert all(r["references"][0].startswith(f"({r['target'].strip()})") for r in rows)
    else:
        assert all(r["target"] == " " + r["references"][0].strip() for r in rows)


def test_gsm_is_split_by_question_its_documents_by_default(leval):
    """GSM's 100 questions share one document (the few-shot examples): split by question."""
    task = LEvalExamTask(file="closed-ended/gsm100.jsonl")
    sizes = [len(task.load_lm_split(s, str(leval))) for s in ("train", "validation", "test")]
    assert sizes == [60, 20, 20]
    with pytest.raises(SsmloraError, match="validation split is empty"):
        data = TaskDataModule(task=LEvalExamTask(file="closed-ended/gsm100.jsonl",
                                                 split_by="document"),
                              data_dir=str(leval), max_length=8192)  # fmt: skip
        data.setup("validate")


def test_topic_retrieval_needs_answer_text(leval):
    task = LEvalExamTask(file="closed-ended/topic_retrieval_longchat.jsonl")
    with pytest.raises(SsmloraError, match=r"Set data\.task\.answer: text"):
        TaskDataModule(task=task, data_dir=str(leval))
    text = LEvalExamTask(file="closed-ended/topic_retrieval_longchat.jsonl", answer="text")
    assert len(_all_rows(text, leval)) == 150
    with pytest.raises(SsmloraError, match=r"answer: letters.*no options"):
        LEvalExamTask(file="closed-ended/sci_fi.jsonl", answer="letters").metric_options(str(leval))  # fmt: skip


def test_every_sci_fi_output_is_a_judgement(leval):
    outputs = [o for d in LEvalExamTask(file="closed-ended/sci_fi.jsonl").documents(str(leval))
               for o in d["outputs"]]  # fmt: skip
    assert len(outputs) == 64
    assert {judge_reference(o) for o in outputs} <= {(a, b) for a in ("true", "false") for b in ("true", "false")}  # fmt: skip


def test_coursera_layout_several_letters(tmp_path):
    """``A. …`` options and bare letters, several for some questions: the target is the letter
    set, responses are read L-Eval's Coursera way, partial credit 0.25."""
    root = write_leval(tmp_path)
    task = LEvalExamTask(file="closed-ended/coursera.jsonl")
    assert task.metric_options(str(root)) == {"answer": "letters", "multiple": True}
    rows = _all_rows(task, root)
    assert len(rows) == 15 and {r["target"] for r in rows} == {" C", " AC", " B", " ABD"}
    assert "\nA. It has 0 slides\nB." in rows[0]["prompt"]
    outputs = ["AC", "AC", "AC", "ABD", "ABD", "B", "C"]
    # right, partial, wrong, right; L-Eval misses a last letter standing alone at the very end
    # (its pattern wants a space, "." or ")" after it): " A B D" reads AB, partial; right; none
    answers = [" AC", " A", "AB", " A B D.", " A B D", " B", ""]
    got = exam_metrics({"answer": "letters", "multiple": True}, answers, outputs)
    assert got["exam_score"] == pytest.approx((1 + 0.25 + 0 + 1 + 0.25 + 1 + 0) / 7)
    assert got["exam_correct"] == pytest.approx(3 / 7)


def test_tpo_layout_with_the_likelihood_task(tmp_path):
    """TPO writes ``A. …`` options and a bare letter: the ``quality`` task (options scored by
    likelihood) reads it; a several-letter answer is refused with a pointer to leval_exam."""
    root = write_leval(tmp_path)
    rows = QualityTask(file="closed-ended/tpo.jsonl").load_lm_split("train", str(root))
    assert rows[0]["choices"] == [" music", " painting", " sport", " food"]
    assert rows[0]["label"] == 1 and rows[0]["target"] == " painting"
    with pytest.raises(SsmloraError, match="the leval_exam task's"):
        QualityTask(file="closed-ended/coursera.jsonl").load_lm_split("train", str(root))


def test_answer_kinds_scored_as_leval():
    """GSM: the number after "The answer is", else the last number of the first paragraph;
    sci-fi: loyalty and fact, half each; topics: the reference inside the answer."""
    assert math_answer("The answer is 1,250.") == "1250"
    assert math_answer("First 3 then 4 so 18\n\nignored 99") == "18"
    assert answer_score(" 18", "18", "number") == 1.0
    assert answer_score("so it is 17", "18", "number") == 0.0
    assert answer_score(" True [fact: False]", "True [fact: False]", "judge") == 1.0
    assert answer_score(" False [fact: False]", "True [fact: False]", "judge") == 0.5
    assert answer_score(" true", "True [fact: False]", "judge") == 0.5  # no fact: <error>
    assert answer_score(" the role of Art in Society", "The role of art in society", "text") == 1.0
    assert answer_score(" space tourism", "The future of space tourism", "text") == 0.0
    got = exam_metrics({"answer": "number"}, [" 18", "7", "The answer is 5"], ["18", "8", "5"])
    assert got == {"exam_score": pytest.approx(2 / 3), "exam_correct": pytest.approx(2 / 3)}
