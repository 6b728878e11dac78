"""FSDP with the adapter wrap policy, sharded over two CPU processes (gloo): the loss, one SGD
step on the averaged gradients and the gathered state dict equal the unwrapped model's.

Found on a GPU (benchmarks/RESULTS.md, the GPU check): with LoRA's ``lora_A``/``lora_B`` as units
of their own, LoRA's forward read ``lora_B.weight`` as a 1-D shard; HRM's 0-d gate was refused.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssmlora_app.adapters import HRMConfig, LoRAConfig, SSMLoRAConfig, inject_adapters
from tests.helpers import tiny_classifier

LLAMA = {"model_type": "llama", "vocab_size": 120, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 64, "pad_token_id": 0}  # fmt: skip
CASES = {
    "lora_llama": (LLAMA, LoRAConfig(r=4, target_modules=["q_proj", "v_proj"])),
    "ssmlora_llama": (LLAMA, SSMLoRAConfig(preset="full_model")),
    "hrm_roberta": (None, HRMConfig(d_state=4)),
}


def _model(case: str) -> torch.nn.Module:
    torch.manual_seed(0)
    fields, adapter = CASES[case]
    model = inject_adapters(tiny_classifier(fields), adapter)
    with torch.no_grad():  # move off the zero init, so gradients reach every factor
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()  # no dropout: both runs draw the same numbers


def _batch(rank: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return {
        "input_ids": torch.randint(3, 120, (2, 12), generator=gen),
        "labels": torch.randint(0, 2, (2,), generator=gen),
    }


def _worker(rank: int, port: int, case: str, out: str) -> None:
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from ssmlora_app.distributed import adapter_wrap_policy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = FSDP(
            _model(case), auto_wrap_policy=adapter_wrap_policy, use_orig_params=True,
            device_id=torch.device("cpu"),
        )  # fmt: skip
        loss = model(**_batch(rank)).loss
        loss.backward()
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
        config = FullStateDictConfig(rank0_only=True)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, config):
            state = model.state_dict()
        if rank == 0:
            torch.save({"loss": loss.detach(), "state": state}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_rank_fsdp_equals_the_unwrapped_model(case, tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(_free_port(), case, out), nprocs=2)
    got = torch.load(out)
    model, other = _model(case), _model(case)
    loss = model(**_batch(0)).loss
    assert float(got["loss"]) == pytest.approx(loss.item(), rel=1e-5)
    (loss + other(**_batch(1)).loss).div(2).backward()  # FSDP averages the ranks' gradients
    others = dict(other.named_parameters())
    with torch.no_grad():  # the step FSDP took: SGD, lr 1, on the averaged gradient
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, name
                p -= p.grad + others[name].grad  # each holds half of its rank's gradient
    assert got["state"].keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(got["state"][key], value, rtol=1e-4, atol=1e-6)


def test_fsdp_on_one_device_is_refused_before_the_fit():
    """On one device FSDP shards nothing and torch cannot checkpoint a partly frozen model after
    a step (seen on an H100): one line instead of an assertion after the first epoch."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from ssmlora_app.distributed import adapter_wrap_policy
    from ssmlora_app.errors import SsmloraError
    from ssmlora_app.preflight import check_fsdp_devices

    fsdp = FSDPStrategy(auto_wrap_policy=adapter_wrap_policy)
    with pytest.raises(SsmloraError, match="FSDP on one device shards nothing"):
        check_fsdp_devices(SimpleNamespace(strategy=fsdp, world_size=1))
    check_fsdp_devices(SimpleNamespace(strategy=fsdp, world_size=2))
    check_fsdp_devices(SimpleNamespace(strategy=DDPStrategy(), world_size=1))


def test_the_fsdp_config_parses_with_the_policy_object(capsys):
    """configs/strategy/fsdp.yaml names the policy object; the CLI takes it (on CPU Lightning
    then refuses FSDP itself, in one line)."""
    from ssmlora_app.cli import main
    from ssmlora_app.distributed import AdapterWrapPolicy
    from tests.conftest import REPO

    argv = ["fit", "--config", str(REPO / "configs/quickstart_random.yaml"),
            "--config", str(REPO / "configs/strategy/fsdp.yaml"), "--print_config"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    assert (
        "auto_wrap_policy: ssmlora_app.distributed.adapter_wrap_policy" in capsys.readouterr().out
    )
    with pytest.raises(TypeError, match="policy object"):
        AdapterWrapPolicy()(torch.nn.Linear(2, 2), False, 0)
