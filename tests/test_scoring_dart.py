"""DART: both reference layouts, BLEU against the benchmark's implementation, METEOR against NLTK's
published values.

BLEU reference numbers: HF ``evaluate``'s ``bleu`` code run here unchanged
(huggingface/evaluate@a7dd3383 ``metrics/bleu/tokenizer_13a.py`` + tensorflow/nmt@263d6dcc
``nmt/scripts/bleu.py``'s ``compute_bleu(max_order=4, smooth=False)``, as ``Bleu._compute``
calls them) on the DART dev references scored against each other: for the 1668 entries with two
or more references, the first reference is the prediction and the others are its references
(``leave-one-out``), or only the second one is (``single``).
"""

import pytest
from torchmetrics.text import SacreBLEUScore

from ssmlora_app.scoring import ScoringError
from ssmlora_app.scoring.bleu import corpus_bleu, tokenize_13a
from ssmlora_app.scoring.dart import dart_scores, linearize, read_dart_json, read_dart_xml
from ssmlora_app.scoring.meteor import meteor

EVALUATE_BLEU = {
    "leave-one-out": {
        "bleu": 0.4897790545776039,
        "precisions": [
            0.7994784750223338,
            0.5674608166243176,
            0.41193771171975524,
            0.30791200944717545,
        ],
        "brevity_penalty": 1.0,
        "length_ratio": 1.0816944814437568,
        "translation_length": 41417,
        "reference_length": 38289,
    },
    "single": {"bleu": 0.38634164957570455, "reference_length": 41043},
}


def _has_wordnet() -> bool:
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
    except (LookupError, OSError):
        return False
    return True


needs_wordnet = pytest.mark.skipif(not _has_wordnet(), reason="NLTK has no WordNet data here")


@pytest.fixture(scope="module")
def dart_dev(shared_data):
    folder = shared_data / "dart"
    if not (folder / "dart-v1.1.1-full-dev.json").is_file():
        pytest.skip(f"{folder} is absent")
    return read_dart_json(folder / "dart-v1.1.1-full-dev.json")


@pytest.fixture(scope="module")
def several(dart_dev):
    return [e.references for e in dart_dev if len(e.references) >= 2]


def test_json_and_xml_layouts_agree(shared_data, dart_dev):
    xml_path = shared_data / "dart" / "dart-v1.1.1-full-dev.xml"
    assert b"\r\n" in xml_path.read_bytes()[:200]  # the official XML has CRLF line ends
    assert read_dart_xml(xml_path) == dart_dev
    assert len(dart_dev) == 2768 and sum(len(e.references) for e in dart_dev) == 6980
    first = dart_dev[0]
    assert first.triples[1] == ("Mars Hill College", "LOCATION", "Mars Hill, North Carolina")
    assert first.references == ("A school from Mars Hill, North Carolina, joined in 1973.",)
    assert linearize(first.triples).startswith("Mars Hill College : JOINED : 1973 | Mars Hill")
    test = read_dart_xml(shared_data / "dart" / "dart-v1.1.1-full-test.xml")
    assert len(test) == 5097 and sum(len(e.references) for e in test) == 12552


def test_bleu_equals_evaluate_on_real_references(several):
    assert len(several) == 1668
    ours = corpus_bleu([r[0] for r in several], [r[1:] for r in several])
    assert ours == EVALUATE_BLEU["leave-one-out"]  # bit for bit
    single = corpus_bleu([r[0] for r in several], [[r[1]] for r in several])
    assert single["bleu"] == pytest.approx(EVALUATE_BLEU["single"]["bleu"], abs=1e-12)
    assert single["reference_length"] == EVALUATE_BLEU["single"]["reference_length"]


@pytest.mark.slow
def test_bleu_equals_torchmetrics_sacrebleu_with_one_reference(several):
    """An independent implementation (torchmetrics' sacreBLEU, 13a, no smoothing): with one
    reference per sentence the shortest reference is the closest one, so they must agree."""
    preds, refs = [r[0] for r in several], [[r[1]] for r in several]
    theirs = SacreBLEUScore(tokenize="13a", smooth=False)(preds, refs).item()
    assert corpus_bleu(preds, refs)["bleu"] == pytest.approx(theirs, abs=1e-6)


def test_bleu_takes_the_shortest_reference_by_hand():
    """'a b c d e' against 'a b c' and 'a b c d e f': every n-gram matches (p_n = 1); TF NMT's
    r is the shortest reference (3 < 5: BP 1, BLEU 1), sacreBLEU's the closest (6: BP e^(1-6/5))."""
    out = corpus_bleu(["a b c d e"], [["a b c", "a b c d e f"]])
    assert out["bleu"] == 1.0 and out["reference_length"] == 3
    closest = SacreBLEUScore(tokenize="13a", smooth=False)(
        ["a b c d e"], [["a b c", "a b c d e f"]]
    )
    assert closest.item() == pytest.approx(0.8187307530779819, abs=1e-6)


def test_13a_tokenizer():
    text = 'Hello, world. It costs 1,000.50 for 3-4 "days" &amp; more.'
    assert tokenize_13a(text) == [
        "Hello", ",", "world", ".", "It", "costs", "1,000.50", "for", "3", "-", "4",
        '"', "days", '"', "&", "more", ".",
    ]  # fmt: skip


def test_bleu_errors():
    with pytest.raises(ScoringError, match="2 predictions for 1 references"):
        corpus_bleu(["a", "b"], ["a"])
    with pytest.raises(ScoringError, match="without a reference"):
        corpus_bleu(["a"], [[]])


def test_meteor_without_synonyms_by_hand():
    """Exact and stem stages only (alpha 0.9, beta 3, gamma 0.5):
    'a quick brown dog jumps' vs 'the quick brown fox jumps': 3 matches, P = R = 3/5,
    Fmean = PR/(0.9P + 0.1R) = 0.6; chunks 2 (quick brown | jumps): penalty 0.5 (2/3)^3 = 4/27;
    METEOR = 0.6 (1 - 4/27) = 0.5111…
    'cats jumped' vs 'cat jumps': 2 stem matches, Fmean 1, one chunk: penalty 0.5 (1/2)^3."""
    out = meteor(["a quick brown dog jumps"], ["the quick brown fox jumps"], synonyms=False)
    assert out["meteor"] == pytest.approx(0.6 * (1 - 4 / 27))
    out = meteor(["cats jumped"], [["nothing here", "cat jumps"]], synonyms=False)
    assert out["meteor"] == pytest.approx(1 - 0.5 / 8)
    assert out["sentence_split"] in ("punkt", "none")


@needs_wordnet
def test_meteor_published_value():
    """NLTK's and evaluate's documented example: 0.6944 (one sentence, so punkt or not gives the
    same tokens); with two more references the best one stays reference 1."""
    hypothesis = (
        "It is a guide to action which ensures that the military always obeys the commands of "
        "the party"
    )
    references = [
        "It is a guide to action that ensures that the military will forever heed Party commands",
        "It is the guiding principle which guarantees the military forces always being under the "
        "command of the Party",
        "It is the practical guide for the army always to heed the directions of the party",
    ]
    assert round(meteor([hypothesis], [references[0]])["meteor"], 4) == 0.6944
    assert round(meteor([hypothesis], [references])["meteor"], 4) == 0.6944
    assert meteor(["this is a cat"], ["non matching hypothesis"])["meteor"] == 0.0


@pytest.mark.skipif(_has_wordnet(), reason="NLTK has WordNet data here")
def test_meteor_without_wordnet_is_a_clear_error():
    with pytest.raises(ScoringError, match="METEOR needs WordNet"):
        meteor(["a"], ["a"])


@pytest.mark.slow
@needs_wordnet
def test_dart_scores_on_real_references(several):
    """A pipeline check on real text: references scored against each other beat the same
    predictions against another entry's references by a wide margin."""
    subset = several[:300]
    preds, refs = [r[0] for r in subset], [r[1:] for r in subset]
    right = dart_scores(preds, refs)
    wrong = dart_scores(preds, refs[1:] + refs[:1])
    assert right["meteor"] > 0.6 and wrong["meteor"] < 0.35  # 0.71 vs 0.27 here
    assert right["bleu"] > 0.4 and wrong["bleu"] < 0.2  # 0.44 vs 0.12 here
    exact_and_stem = meteor(preds, refs, synonyms=False)["meteor"]
    assert exact_and_stem <= right["meteor"]
