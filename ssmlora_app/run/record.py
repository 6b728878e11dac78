"""What a run records about itself: the backbone, the adapter, the task and the parameter counts.

The module writes it as its hyperparameters (``hparams.yaml`` in the run folder, and the
``ssmlora_hparams`` of every checkpoint); ``export``, ``report`` and ``predict`` read it back
through :meth:`RunRecord.from_hparams`. Plain values only, so checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ssmlora_app.adapters import AdapterConfig
from ssmlora_app.adapters.io import config_from_record
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import TaskInfo

PARAM_KEYS = ("params/trainable", "params/adapter", "params/total")
"""Parameter counts recorded with a run (TensorBoard's hparams view shows them)."""


@dataclass
class RunRecord:
    """A run's configuration as the model saw it, and its parameter counts."""

    backbone: BackboneConfig
    adapter: AdapterConfig
    task_info: TaskInfo
    init_adapter_from: str | None = None
    params: dict[str, int] = field(default_factory=dict)
    """``params/trainable``, ``params/adapter`` (head excluded) and ``params/total``."""

    def to_hparams(self) -> dict:
        """The hyperparameter dict the module saves (plain values)."""
        return {
            "backbone": dataclasses.asdict(self.backbone),
            "adapter": self.adapter_fields(),
            "init_adapter_from": self.init_adapter_from,
            "task_info": self.task_info.to_record(),
            **self.params,
        }

    def adapter_fields(self) -> dict:
        """The adapter config as ``{adapter_type, field: value, ...}`` (how runs are grouped)."""
        return {"adapter_type": self.adapter.adapter_type, **dataclasses.asdict(self.adapter)}

    @classmethod
    def from_hparams(cls, hparams: dict, origin: str) -> RunRecord:
        """The record in ``hparams`` (read from ``origin``, named in errors)."""
        try:
            adapter = dict(hparams["adapter"])
            backbone_fields = {f.name for f in dataclasses.fields(BackboneConfig)}
            return cls(
                backbone=BackboneConfig(
                    **{k: v for k, v in hparams["backbone"].items() if k in backbone_fields}
                ),
                adapter=config_from_record(adapter.pop("adapter_type", "lora"), adapter),
                task_info=TaskInfo.from_record(hparams["task_info"]),
                init_adapter_from=hparams.get("init_adapter_from"),
                params={k: hparams[k] for k in PARAM_KEYS if k in hparams},
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise SsmloraError(
                f"{origin} does not record a run (backbone, adapter, task_info): {err!r}. Give "
                "what `ssmlora fit` wrote."
            ) from None
