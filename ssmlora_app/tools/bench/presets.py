"""``ssmlora bench``'s presets: a backbone shape and the settings it is measured at."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

BASELINE = "lora"
"""The method every ratio is taken against."""


@dataclass(frozen=True)
class FitSettings:
    """How ``ssmlora bench`` measures ``ssmlora fit`` against the bare step (:mod:`.fit`)."""

    batch_size: int
    """Training batch size (``data.batch_size``)."""
    max_length: int
    """Longest tokenised example (``data.max_length``)."""
    task: str = "quickstart"
    """The task (generated in code: no dataset download)."""
    warmup: int = 3
    """Steps before the timed window."""
    steps: int = 20
    """Timed steps per round (within the first epoch: no epoch end in the window)."""
    log_every_n_steps: int = 10
    """Logging interval inside the window (the quickstart's)."""


@dataclass(frozen=True, kw_only=True)
class BenchPreset:
    """A backbone shape (or real weights) and the settings it is measured at."""

    backbone: Mapping[str, object] = field(default_factory=dict)
    """Transformers config fields with ``model_type`` (random weights); empty with ``weights``."""
    seq_lens: tuple[int, ...]
    """Sequence lengths of the whole-model rows (GPU)."""
    batch_size: int
    """Batch size (GPU)."""
    cpu_seq_lens: tuple[int, ...]
    """Sequence lengths on CPU, where the long ones would take many minutes per step."""
    cpu_batch_size: int
    """Batch size on CPU."""
    lora_targets: tuple[str, ...]
    """The linear targets of the LoRA-like rows (``BenchSettings.targets``) and of ``peft``'s LoRA."""
    methods: tuple[str, ...]
    """Measured by default: bench baselines (:data:`BASELINES`) and registered adapter methods
    (each gives the rows of its ``bench`` hook); unavailable ones are skipped with a note."""
    scan_seq_lens: tuple[int, ...] = ()
    """Sequence lengths of the scan-alone rows (empty: none)."""
    scan_d_state: int = 16
    """State size of the scan-alone rows; also the rank of their parameter-matched LoRA bypass."""
    method_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """Per registered method: its ``BenchSettings.options`` (e.g. ``{"hrm": {"d_state": 32}}``)."""
    requires_adapter: str | None = None
    """Skip the whole preset when this adapter is not in the registry."""
    weights: str | None = None
    """Real pretrained weights: a folder under ``ssmlora bench --weights`` (written by ``make
    weights``) that the backbone loads from; the preset is skipped with one line without it."""
    fit: FitSettings | None = None
    """Also measure ``ssmlora fit`` end to end against the bare step (needs ``weights``)."""


_ROBERTA_BASE = MappingProxyType(
    {
        "model_type": "roberta",
        "vocab_size": 50265,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "pad_token_id": 1,
    }
)
_LLAMA_TINY = MappingProxyType(
    {
        "model_type": "llama",
        "vocab_size": 1000,
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 16384,
        "pad_token_id": 0,
    }
)
_LLAMA_1B_LAYER = MappingProxyType(
    {  # one layer of Llama-3.2-1B's shapes; the vocabulary cut to keep RAM small
        "model_type": "llama",
        "vocab_size": 1000,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 1,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 16384,
        "pad_token_id": 0,
    }
)
_MAMBA_130M = MappingProxyType(
    {
        "model_type": "mamba",
        "vocab_size": 50280,
        "hidden_size": 768,
        "state_size": 16,
        "num_hidden_layers": 24,
        "pad_token_id": 0,
    }
)
_ALL = (
    "frozen",
    "full",
    "lora",
    "peft_lora",
    "ssmlora",
    "lora_full_model",
    "lora_attention_sparse",
    "hrm",
)

PRESETS: MappingProxyType[str, BenchPreset] = MappingProxyType(
    {
        "roberta-base": BenchPreset(
            backbone=_ROBERTA_BASE,
            seq_lens=(128, 512),
            batch_size=8,
            cpu_seq_lens=(128, 256),  # every method within ~5 CPU-minutes; 512 via --seq_lens
            cpu_batch_size=1,
            lora_targets=("query", "value"),
            methods=_ALL,
        ),
        "llama-tiny": BenchPreset(
            backbone=_LLAMA_TINY,
            seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
            batch_size=2,
            cpu_seq_lens=(512, 1024, 2048),
            cpu_batch_size=2,
            lora_targets=("q_proj", "v_proj"),
            methods=_ALL,
            scan_seq_lens=(512, 1024, 2048, 4096),
        ),
        "llama-1b-shapes": BenchPreset(
            backbone=_LLAMA_1B_LAYER,
            seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
            batch_size=1,
            cpu_seq_lens=(512, 1024),
            cpu_batch_size=1,
            lora_targets=("q_proj", "v_proj"),
            methods=("frozen", "lora", "hrm"),
            scan_seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
            scan_d_state=32,
            method_options={"hrm": {"d_state": 32}},
        ),
        "minilm": BenchPreset(
            weights="all-MiniLM-L6-v2",  # a 6-layer BERT encoder, 22.7M parameters
            seq_lens=(128, 512),
            batch_size=32,
            cpu_seq_lens=(64,),
            cpu_batch_size=32,
            lora_targets=("query", "value"),
            methods=(*_ALL, "bitfit"),
            fit=FitSettings(batch_size=32, max_length=64),
        ),
        "smollm2-135m": BenchPreset(
            weights="SmolLM2-135M-Instruct",  # a 30-layer Llama decoder, 135M parameters
            seq_lens=(512, 2048),
            batch_size=8,
            cpu_seq_lens=(64,),
            cpu_batch_size=4,
            lora_targets=("q_proj", "v_proj"),
            methods=(
                "frozen",
                "lora",
                "peft_lora",
                "ssmlora",
                "lora_full_model",
                "lora_attention_sparse",
                "hrm_fft",
            ),
            fit=FitSettings(batch_size=8, max_length=64),
        ),
        "mamba-130m": BenchPreset(
            backbone=_MAMBA_130M,
            seq_lens=(512, 2048),
            batch_size=4,
            cpu_seq_lens=(64, 128),  # transformers' reference selective scan: 30 s/step at 512
            cpu_batch_size=1,
            lora_targets=("in_proj", "out_proj"),
            methods=(
                "frozen",
                "full",
                "lora",
                "peft_lora",
                "sdt",
                "bitfit",
                "mamba_lora",
                "layer_freeze",
                "init_state",
                "state_offset",
                "additional_scan",
                "ssm_prefix",
            ),
            requires_adapter="sdt",
        ),
    }
)
"""Named settings of ``ssmlora bench --preset``."""
