"""Target matching follows peft: regex full match, exact names or suffixes, layers, excludes."""

import pytest

from ssmlora_app.adapters.targets import find_targets, layer_index, name_matches
from tests.helpers import tiny_classifier


def test_string_is_a_full_regex_match():
    assert name_matches("roberta.encoder.layer.0.attention.self.query", r".*\.query")
    assert not name_matches("roberta.encoder.layer.0.attention.self.query", r"query")


def test_list_matches_exact_names_and_suffixes():
    assert name_matches("a.b.query", ["query"])
    assert name_matches("query", ["query"])
    assert not name_matches("a.b.xquery", ["query"])


def test_layer_index():
    assert layer_index("roberta.encoder.layer.3.attention.self.query", None) == 3
    assert layer_index("transformer.h.11.attn.c_attn", "h") == 11
    assert layer_index("classifier.dense", None) is None


def test_layers_and_excludes_and_skip():
    model = tiny_classifier()
    names = find_targets(model, ["query", "value"], layers_to_transform=[1])
    assert names == [
        "roberta.encoder.layer.1.attention.self.query",
        "roberta.encoder.layer.1.attention.self.value",
    ]
    names = find_targets(model, ["dense"], exclude_modules=[r"output.dense"], skip=["classifier"])
    assert names == [
        "roberta.encoder.layer.0.intermediate.dense",
        "roberta.encoder.layer.1.intermediate.dense",
    ]
    with_head = find_targets(model, ["dense"])
    assert "classifier.dense" in with_head


def test_regex_targets():
    names = find_targets(tiny_classifier(), r".*layer\.0\..*(query|key)")
    assert [n.rsplit(".", 1)[1] for n in names] == ["query", "key"]


@pytest.mark.parametrize("pattern", [["nope"], r"query"])
def test_no_match_raises(pattern):
    with pytest.raises(ValueError, match="matches no layer"):
        find_targets(tiny_classifier(), pattern)
