"""Shared test set-up: offline hub, tiny model configs, and the optional real-data folder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

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


def pytest_addoption(parser):
    parser.addoption(
        "--shared-data",
        default=os.environ.get("SSMLORA_SHARED_DATA", str(REPO.parent / "shared" / "data")),
        help="Folder with the real data (GLUE TSVs, RoBERTa tokenizer); tests using it skip "
        "when it is absent.",
    )


@pytest.fixture(scope="session")
def shared_data(request) -> Path:
    path = Path(request.config.getoption("--shared-data"))
    if not (path / "glue").is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
