"""The adapter method contract: registration, and the hooks generic code calls (whole-model
wrapping, parameter subsets, callbacks, diagnostics, generation, subcommands) without naming a
method anywhere outside the method's file."""

import ast
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from ssmlora_app.adapters import (
    ADAPTERS,
    AdapterConfig,
    AdapterMethod,
    Diagnostics,
    LoRAConfig,
    adapter_diagnostics,
    adapter_state_dict,
    count_trainable_parameters,
    generation_context,
    inject_adapters,
    load_adapter,
    register_adapter,
    save_adapter,
)
from ssmlora_app.adapters.registry import _METHODS
from ssmlora_app.cli import extra_commands
from tests.conftest import REPO
from tests.helpers import tiny_classifier


@dataclass
class BiasOnlyConfig(AdapterConfig):
    """A parameter-subset method (BitFit-like): the query biases train, nothing is added."""

    adapter_type: ClassVar[str] = "test_bias_only"


def _unfreeze_query_biases(model: nn.Module, config, skip) -> list[str]:
    names = [n for n, _ in model.named_parameters() if n.endswith("query.bias")]
    for name in names:
        model.get_parameter(name).requires_grad_(True)
    return names


class Wrapper(nn.Module):
    """A whole-model wrapper (as a peft prompt-tuning model would be)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, **inputs):
        return self.inner(**inputs)


@dataclass
class WrappedConfig(AdapterConfig):
    adapter_type: ClassVar[str] = "test_wrapped"


@contextlib.contextmanager
def _flagging(model):
    model.generating = True
    yield model
    model.generating = False


@pytest.fixture
def registered():
    """Register the two test methods for one test only."""
    methods = [
        AdapterMethod(BiasOnlyConfig, _unfreeze_query_biases, mergeable=True),
        AdapterMethod(
            WrappedConfig,
            lambda model, config, skip: [],
            wrap_model=lambda model, config: Wrapper(model),
            diagnostics=lambda model: Diagnostics(scalars={"test/value": 1.5}),
            generation=_flagging,
            callbacks=lambda config: ["a callback"],
            commands={"test_command": lambda: None},
        ),
    ]
    for method in methods:
        register_adapter(method)
    yield methods
    for method in methods:
        _METHODS.pop(method.name)


def test_a_parameter_subset_method_trains_and_saves_that_subset(registered, tmp_path):
    model = inject_adapters(tiny_classifier(), BiasOnlyConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    biases = {n for n in trainable if n.endswith("query.bias")}
    assert len(biases) == 2 and trainable == biases | {
        n for n in trainable if n.startswith("classifier.")
    }
    assert set(adapter_state_dict(model)) == trainable
    with torch.no_grad():
        for name in biases:
            model.get_parameter(name).add_(0.5)
    save_adapter(model, tmp_path / "bias")
    loaded = load_adapter(tiny_classifier(), tmp_path / "bias")
    ids = torch.tensor([[0, 5, 17, 42, 2]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert count_trainable_parameters(loaded, include_head=False) == 2 * 32


def test_whole_model_wrapping_and_the_generic_hooks(registered):
    model = inject_adapters(tiny_classifier(), WrappedConfig())
    assert isinstance(model, Wrapper)
    assert model.ssmlora_config.adapter_type == "test_wrapped"
    assert adapter_diagnostics(model).scalars == {"test/value": 1.5}
    with generation_context(model):
        assert model.generating
    assert not model.generating
    assert ADAPTERS["test_wrapped"].callbacks(WrappedConfig()) == ["a callback"]
    assert "test_command" in extra_commands()


def test_methods_without_hooks_get_no_ops():
    model = inject_adapters(tiny_classifier(), LoRAConfig(r=2))
    assert adapter_diagnostics(model) is None
    with generation_context(model) as inside:
        assert inside is None


def test_a_name_is_registered_once():
    @dataclass
    class Impostor(AdapterConfig):
        adapter_type: ClassVar[str] = "lora"

    with pytest.raises(ValueError, match=r"taken by ssmlora_app\.adapters\.lora\.LoRAConfig"):
        register_adapter(AdapterMethod(Impostor, lambda *args: []))
    register_adapter(ADAPTERS["lora"])  # the same method again: a no-op
    assert ADAPTERS["lora"].config_cls is LoRAConfig


def _identifiers(path) -> set[str]:
    """Every name a file's code uses: imported modules and names, variables, attributes."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
        if isinstance(node, ast.alias):
            names.add(node.name)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def test_no_generic_file_names_a_method():
    """The module, the CLI and the callbacks read the registry: no code in them (imports, names,
    attributes) refers to a particular method."""
    generic = [
        REPO / "ssmlora_app" / "module.py",
        REPO / "ssmlora_app" / "cli.py",
        *sorted((REPO / "ssmlora_app" / "callbacks").glob("*.py")),
    ]
    method_words = ("hrm", "sdt", "ssmlora_diag", "ssmloralinear", "ssmloraconfig", "loraconfig",
                    "loralinear", "lora_a", "lora_b")  # fmt: skip
    for path in generic:
        for name in _identifiers(path):
            lowered = name.lower().removeprefix("ssmlora_app").removeprefix(".")
            assert not any(word in lowered for word in method_words), (path.name, name)
            # the package's registry and contract only, never a method's own file
            generic_parts = ("ssmlora_app.adapters.base", "ssmlora_app.adapters.registry")
            assert not name.lower().startswith("ssmlora_app.adapters.") or name.lower().startswith(
                generic_parts
            ), (path.name, name)


def test_configs_are_dataclasses_with_documented_fields():
    for method in ADAPTERS.values():
        assert dataclasses.is_dataclass(method.config_cls)
        assert method.config_cls.__doc__, method.name
