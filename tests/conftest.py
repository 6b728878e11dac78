"""Shared test set-up: offline hub, tiny model configs, and the optional real-data folder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one core per worker, not two each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]


def _cache_attribute_docstrings() -> None:
    """Every ``main([...])`` in the tests builds the whole CLI parser again, and 70 % of that is
    jsonargparse reading the same classes' attribute docstrings from their source (``--help``
    text). The ``ssmlora`` command builds its parser once per process; the tests read each class's
    docstrings once per worker. Same results, a few minutes less for the suite."""
    import functools

    import docstring_parser

    parse = docstring_parser.parse_from_object
    cached = functools.lru_cache(maxsize=None)(lambda obj, style: parse(obj, style=style))

    def parse_from_object(obj, style=docstring_parser.DocstringStyle.AUTO):
        try:
            return cached(obj, style)
        except TypeError:  # an unhashable object
            return parse(obj, style=style)

    docstring_parser.parse_from_object = parse_from_object


_cache_attribute_docstrings()

TINY_ROBERTA = {
    "model_type": "roberta",
    "vocab_size": 120,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
    "pad_token_id": 1,
}


def pytest_collection_modifyitems(config, items):
    """Longest first: the real-weights fits, then the other slow tests, then the unit tests. With
    ``pytest -n 2`` (the README's test command) the two workers then finish together instead of
    one waiting on a fit handed out last; in one process the order changes nothing else."""

    def rank(item) -> int:
        if item.get_closest_marker("real") and item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)  # stable: the file order stays within each group


def pytest_addoption(parser):
    parser.addoption(
        "--shared-data",
        default=os.environ.get("SSMLORA_SHARED_DATA", str(REPO.parent / "shared" / "data")),
        help="Folder with the real data (GLUE TSVs, RoBERTa tokenizer); tests using it skip "
        "when it is absent.",
    )
    parser.addoption(
        "--real-weights",
        default=os.environ.get("SSMLORA_WEIGHTS", "~/.cache/ssmlora/weights"),
        help="Folder of real pretrained weights written by `make weights` (MiniLM, SmolLM2); "
        "tests using it skip when it is absent.",
    )


@pytest.fixture(scope="session")
def shared_data(request) -> Path:
    path = Path(request.config.getoption("--shared-data"))
    if not (path / "glue").is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


@pytest.fixture(scope="session")
def real_weights(request) -> Path:
    """The folder of real pretrained weights written by ``make weights`` (MiniLM, SmolLM2); the
    tests using it skip, with one line naming the command, when it is incomplete."""
    from ssmlora_app.tools.weights import PACKAGES, SMOLLM2_DENSE, is_complete

    path = Path(request.config.getoption("--real-weights")).expanduser()
    missing = [p.requirement for p in PACKAGES.values() if not is_complete(p, path)]
    if not (path / SMOLLM2_DENSE / "model.safetensors").is_file():
        missing.append(SMOLLM2_DENSE)
    if missing:
        pytest.skip(f"real weights absent from {path} ({', '.join(missing)}): run `make weights`")
    return path


@pytest.fixture(scope="session")
def minilm(real_weights) -> Path:
    """The real all-MiniLM-L6-v2 folder (BERT encoder)."""
    from ssmlora_app.tools.weights import MINILM

    return real_weights / MINILM.folder


@pytest.fixture(scope="session")
def smollm2(real_weights) -> Path:
    """The real SmolLM2-135M-Instruct folder (dense float32 copy of the GGUF)."""
    from ssmlora_app.tools.weights import SMOLLM2_DENSE

    return real_weights / SMOLLM2_DENSE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
