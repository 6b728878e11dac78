"""The rows of docs/faults.md's bad-input table added in the last round of issue 16: each input
given to the command as a user would, answered by one ``ssmlora: error:`` line (exit 2) before any
work, with no run folder or output left behind."""

import pytest
import torch

from ssmlora_app.cli import main
from tests.conftest import REPO

QUICKSTART = str(REPO / "configs" / "quickstart_random.yaml")


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("ssmlora: error: "), err
    assert "Traceback" not in err
    return err


TOOL_INPUTS = [
    (["export", "--out", "OUT"], "Give exactly one of --run, --checkpoint and --adapter"),
    (
        ["export", "--out", "OUT", "--run", "EMPTY", "--checkpoint", "FILE"],
        "Give exactly one of --run, --checkpoint and --adapter",
    ),
    (["export", "--out", "OUT", "--run", "EMPTY"], "Give a run folder written by `ssmlora fit`"),
    (["export", "--out", "OUT", "--adapter", "EMPTY"], "--adapter needs --backbone"),
    (["import", "--out", "OUT", "--source", "EMPTY"], "Set exactly one of --backbone.name_or_path"),
    (["report", "--runs", "FILE"], "FILE is a file: give the folder of the runs"),
    (["bench", "--preset", "nope"], "Unknown bench preset 'nope'; choose from"),
    (["bench", "--preset", "roberta-base", "--methods", "[nope]"], "Unknown bench method(s)"),
    (["bench", "--device", "tpu"], "--device must be cpu or cuda (cuda:N), got 'tpu'"),
    (["bench", "--seq_lens", "[0]"], "--seq_lens and --scan_seq_lens must be at least 1"),
    (["reduce", "--adapter", "EMPTY", "--out", "OUT"], "Cannot read adapter config"),
    (
        ["sweep", "--configs", f"[{QUICKSTART}]", "--seeds", "[abc]", "--runs", "OUT"],
        "seeds: expected int, got abc (see ssmlora sweep --help)",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"), TOOL_INPUTS, ids=[" ".join(a[:4]) for a, _ in TOOL_INPUTS]
)
def test_a_bad_tool_argument_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    subst = {"OUT": str(tmp_path / "out"), "EMPTY": str(tmp_path / "empty"),
             "FILE": str(tmp_path / "file")}  # fmt: skip
    err = _one_line_error(capsys, [subst.get(a, a) for a in args])
    assert message.replace("FILE", subst["FILE"]) in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in (tmp_path / "empty").iterdir()] == []


FIT_INPUTS = [
    ("--trainer.accelerator=tpu", "trainer settings: Requirement 'torch_xla"),
    ("--trainer.devices=0", "`Trainer(devices='0')` value is not a valid input using cpu"),
    ("--trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: give 1"),
    ("--trainer.val_check_interval=0", "trainer.val_check_interval=0: give a fraction"),
    ("--trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch=0: give 1 or more"),
    ("--trainer.gradient_clip_val=-1", "would scale every gradient by a negative factor"),
    ("--trainer.limit_val_batches=-1", "invalid value -1 for limit_val_batches"),
    ("--trainer.max_time=abc", "`Timer(duration='abc')` is not a valid duration"),
    ("--checkpoint.every_n_train_steps=-1", "checkpoint.every_n_train_steps=-1: give 0 (off)"),
    ("--checkpoint.every_n_epochs=-2", "checkpoint.every_n_epochs=-2: give 0 (off) or more"),
    ("--data.num_workers=-1", "data.num_workers must be 0 (load in the main process) or more"),
    ("--data.eval_batch_size=0", "data.eval_batch_size must be positive, got 0"),
    ("--data.max_train_samples=-1", "The quickstart train split is empty"),
    ("--model.adapter.init_args.dropout=1.5", "LoRA dropout must be in [0, 1), got 1.5"),
    ("--model.adapter.init_args.alpha=0", "LoRA alpha=0 scales the update alpha/r to zero"),
    ("--model.scheduler.init_args.warmup_ratio=2", "warmup_ratio must be in [0, 1]"),
    ("--model.scheduler.init_args.warmup_steps=-5", "warmup_steps must be 0 or more, got -5"),
    ("--model.optimizer.class_path=torch.optim.Nope", "has no attribute 'Nope'"),
    ("--float32_matmul_precision=ultra", "float32_matmul_precision: expected one of 'highest'"),
    ("--model.backbone.name_or_path=EMPTY", "EMPTY has none of ('tokenizer.json'"),
    ('--model.backbone.config={"model_type": "nope"}', "transformers has no model_type 'nope'"),
    ('--model.backbone.config={"model_type": "robreta"}', "(did you mean roberta"),
    ("--model.backbone.name_or_path=/no/such/model", "Tokenizer '/no/such/model': no such folder"),
    ("--trainer.precision=12", "trainer.precision: expected one of 64, 32, 16"),
    pytest.param(
        "--trainer.accelerator=gpu",
        "trainer settings: No supported gpu backend found",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there"),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), FIT_INPUTS)
def test_a_bad_fit_setting_is_one_line_and_leaves_no_run_folder(
    tmp_path, capsys, override, message
):
    (tmp_path / "empty").mkdir()
    override = override.replace("EMPTY", str(tmp_path / "empty"))
    runs = tmp_path / "runs"
    err = _one_line_error(
        capsys,
        ["fit", "--config", QUICKSTART, f"--trainer.logger.init_args.save_dir={runs}", override],
    )
    assert message.replace("EMPTY", str(tmp_path / "empty")) in err
    assert not runs.exists(), "a refused fit left a folder behind"


def test_a_negative_clip_value_would_turn_the_update_around():
    """Why gradient_clip_val < 0 is refused rather than passed on: torch scales the gradients by
    max_norm / norm, clamped above at 1 only, so a negative value flips their sign."""
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.tensor([1.0, 2.0, 2.0])
    torch.nn.utils.clip_grad_norm_([weight], max_norm=-1.0)
    assert torch.all(weight.grad < 0)
