"""Issue 16, nothing silent, nothing lost: bad input is one ``ssmlora: error:`` line (exit 2)
before any work and leaves no run folder; evaluations need a trained model and write inside their
run; a run folder is never fitted into twice; ``last.ckpt`` is the final state; a checkpoint of
another task is refused naming the classes; adapters are stored fp32 and by the umask; sweeps skip
finished runs and resume stopped ones. (Report pooling and collapsed runs: test_report_pooling.py;
SIGTERM's exit code: test_faults.py.)"""

import dataclasses
import json
import os
from types import SimpleNamespace

import pytest
import torch
from jsonargparse import Namespace
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from safetensors.torch import load_file

from ssmlora_app import preflight
from ssmlora_app.adapters import LoRAConfig
from ssmlora_app.adapters.io import write_adapter_folder
from ssmlora_app.atomic import atomic_write_text, new_file_mode
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.cli import main
from ssmlora_app.errors import SsmloraError
from ssmlora_app.outputs import check_output_dir
from ssmlora_app.run import CheckpointInfo, RunRecord, inspect_checkpoint
from ssmlora_app.run.checkpoint import differences
from ssmlora_app.tasks.base import TaskInfo
from ssmlora_app.tasks.metrics import ExactMatch, token_f1
from ssmlora_app.tasks.vocab import byte_tokenizer
from ssmlora_app.tools.sweep import plan, sweep_commands
from tests.conftest import REPO, TINY_ROBERTA
from tests.helpers import tiny_classifier

QUICKSTART = str(REPO / "configs" / "quickstart_random.yaml")


def _error(call) -> str:
    with pytest.raises(SsmloraError) as info:
        call()
    return str(info.value)


# --- config files, read before the parser -------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty: a config holds trainer, model and data sections"),
        ("# only a comment\n", "is empty"),
        ("a: [\n", "is not valid YAML (line 2)"),
        ("- 1\n", "holds a list, not a mapping of sections"),
        ("just text\n", "holds a str, not a mapping"),
        ("\xff\xfe", "cannot read it"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="latin-1")
    assert message in _error(lambda: preflight.check_config_files(["--config", str(path)]))


def test_a_missing_or_folder_config_is_one_line(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert "no such file" in _error(lambda: preflight.check_config_files(["--config", missing]))
    assert "is a folder" in _error(lambda: preflight.check_config_files(["-c", str(tmp_path)]))


# --- checkpoints: never a traceback, never "weights_only=False" -------------------------------------
def _bad_checkpoints(tmp_path):
    torch.save({"x": torch.zeros(256)}, tmp_path / "foreign.ckpt")
    whole = (tmp_path / "foreign.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "random.ckpt").write_bytes(os.urandom(4096))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    (tmp_path / "folder.ckpt").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "no_record.ckpt")
    return {
        "missing.ckpt": "no such file",
        "folder.ckpt": "is a folder, not a checkpoint",
        "random.ckpt": "is not a checkpoint",
        "truncated.ckpt": "is not a checkpoint",
        "empty.ckpt": "is not a checkpoint",
        "text.ckpt": "is not a checkpoint",
        "foreign.ckpt": "is not an ssmlora checkpoint",
        "no_record.ckpt": "is not an ssmlora checkpoint",
    }


def test_a_bad_checkpoint_is_one_line_naming_the_option(tmp_path):
    for name, message in _bad_checkpoints(tmp_path).items():
        error = _error(lambda n=name: inspect_checkpoint(tmp_path / n, "--checkpoint"))
        assert error.startswith(f"--checkpoint={tmp_path / name}") and message in error, error
        assert "weights_only" not in error and "\n" not in error


def _record(num_labels=2, labels=("negative", "positive"), task="sst2", r=8):
    info = TaskInfo(task=task, num_labels=num_labels, problem_type="single_label_classification",
                    metrics=("accuracy",), eval_splits=("validation",), label_names=labels)  # fmt: skip
    return RunRecord(BackboneConfig(name_or_path="roberta-base"), LoRAConfig(r=r), info)


def test_a_checkpoint_of_another_run_names_what_differs():
    assert differences(_record(), _record()) == []
    three = _record(3, ("entailment", "neutral", "contradiction"), task="mnli")
    found = "; ".join(differences(_record(), three))
    assert "trained on task 'sst2', this config's task is 'mnli'" in found
    assert "its head has 2 output(s) (2 classes), the task has 3 (3 classes)" in found
    swapped = "; ".join(differences(_record(), _record(labels=("positive", "negative"))))
    assert "mislabelled" in swapped
    assert "r=8 (now 4)" in "; ".join(differences(_record(), _record(r=4)))
    other = dataclasses.replace(_record(), backbone=BackboneConfig(name_or_path="/m/roberta-large"))
    assert "its backbone is" in "; ".join(differences(_record(), other))
    local = dataclasses.replace(_record(), backbone=BackboneConfig(name_or_path="/m/roberta-base/"))
    assert differences(_record(), local) == []  # a local copy of the same model fits


def test_a_resume_that_would_train_no_step_is_refused(tmp_path):
    info = CheckpointInfo(tmp_path / "last.ckpt", _record(), global_step=40, epochs_started=2)
    preflight.check_resume_trains(info, Namespace(max_epochs=3, max_steps=-1))  # trains on
    for limits in ({"max_epochs": 2, "max_steps": -1}, {"max_epochs": None, "max_steps": 40}):
        error = _error(lambda lim=limits: preflight.check_resume_trains(info, Namespace(**lim)))
        assert "already trained to the end (epoch 2, step 40" in error


@pytest.mark.parametrize("value", ["best", "hpc", "registry", "last"])
def test_special_ckpt_paths_need_the_file(value):
    config = Namespace(ckpt_path=value, trainer=Namespace(logger=None))
    error = _error(lambda: preflight.resolve_ckpt_path(config, "predict"))
    assert (
        f"--ckpt_path={value}" in error and "runs/<name>/version_N/checkpoints/last.ckpt" in error
    )


def test_a_bad_init_adapter_from_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    for path, message in [
        ("file", "is a file"),
        ("missing", "is no adapter folder"),
        ("run/adapter", "is a folder without adapter_config.json"),
        ("run", "(a run folder: give its adapter/)"),
    ]:
        model = Namespace(init_adapter_from=str(tmp_path / path))
        assert message in _error(lambda m=model: preflight.check_init_adapter_from(m)), path


def test_an_adapter_folder_of_another_head_or_class_order_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"ssmlora": {"label_names": ["positive", "negative"]}})
    )
    model = SimpleNamespace(init_adapter_from=str(tmp_path), task_info=_record().task_info,
                            head_loaded=False)  # fmt: skip
    assert "its head does not fit task 'sst2' (2 outputs)" in _error(
        lambda: preflight.check_adapter_head(model)
    )
    model.head_loaded = True
    error = _error(lambda: preflight.check_adapter_head(model))
    assert "was trained with the classes ['positive', 'negative']" in error


# --- trainer limits, optimizer, outputs, evaluations -------------------------------------------------
@pytest.mark.parametrize("key", ["max_epochs", "max_steps", "limit_train_batches"])
def test_a_fit_that_trains_no_step_is_refused(key):
    trainer = Namespace(max_epochs=3, max_steps=-1, limit_train_batches=None)
    preflight.check_trainer_limits(trainer)  # trains: fine
    trainer[key] = 0
    assert f"trainer.{key}=0 trains no step" in _error(
        lambda: preflight.check_trainer_limits(trainer)
    )


@pytest.mark.parametrize(
    ("optimizer", "init_args", "message"),
    [
        ("torch.optim.AdamW", {"lr": -0.1}, "model.optimizer (AdamW): Invalid learning rate: -0.1"),
        ("torch.optim.AdamW", {"betas": (2.0, 0.9)}, "Invalid beta parameter at index 0"),
        ("torch.optim.AdamW", {"eps": -1.0}, "Invalid epsilon value"),
        ("torch.optim.AdamW", {"weight_decay": -1.0}, "Invalid weight_decay value"),
        ("torch.optim.SGD", {"lr": 0.1, "momentum": -1.0}, "Invalid momentum value"),
        ("torch.optim.AdamW", {"lr": 0.1, "colour": 1}, "unexpected keyword argument 'colour'"),
    ],
)
def test_bad_optimizer_settings_are_one_line(optimizer, init_args, message):
    model = Namespace(optimizer=Namespace(class_path=optimizer, init_args=Namespace(**init_args)))
    assert message in _error(lambda: preflight.check_optimizer(model))


def test_a_bad_scheduler_setting_is_one_line():
    model = Namespace(
        optimizer=Namespace(class_path="torch.optim.AdamW", init_args=Namespace(lr=0.1)),
        scheduler=Namespace(class_path="ssmlora_app.optim.LinearWarmupDecay",
                            init_args=Namespace(warmup_ratio=0.1, colour=2)),
    )  # fmt: skip
    assert "model.scheduler (LinearWarmupDecay)" in _error(lambda: preflight.check_optimizer(model))


def test_an_output_folder_is_never_a_file_nor_overwritten_silently(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in _error(lambda: check_output_dir(tmp_path / "file", "--out"))
    inside = tmp_path / "file" / "sub"
    assert "is a file, not a folder" in _error(lambda: check_output_dir(inside, "--out"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "merged").mkdir()
    error = _error(lambda: check_output_dir(tmp_path / "full", "--out"))
    assert "already holds merged: choose a new folder, or pass --overwrite true" in error
    assert check_output_dir(tmp_path / "full", "--out", overwrite=True) == tmp_path / "full"
    assert check_output_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"


def test_an_evaluation_needs_a_trained_model():
    config = Namespace(model=Namespace(init_adapter_from=None), ckpt_path=None,
                       allow_untrained=False, trainer=Namespace(logger=None))  # fmt: skip
    for stage in ("validate", "test", "predict"):
        error = _error(lambda s=stage: preflight.place_evaluation(config, s, None))
        assert f"{stage} needs a trained model: give --ckpt_path" in error
        assert "--allow_untrained true" in error


# --- what is written -----------------------------------------------------------------------------
def test_adapters_are_stored_fp32_with_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        assert new_file_mode() == 0o640
        folder = write_adapter_folder(
            tmp_path / "adapter",
            {"layer.lora_A": torch.ones(2, 3, dtype=torch.float64), "n": torch.ones(2).bfloat16()},
            {"adapter_type": "lora"},
        )
        text = atomic_write_text(tmp_path / "notes.txt", "x")
    finally:
        os.umask(old)
    tensors = load_file(folder / "adapter_model.safetensors")
    assert {v.dtype for k, v in tensors.items() if k.endswith("lora_A")} == {torch.float32}
    assert {v.dtype for k, v in tensors.items() if k.endswith(".n")} == {torch.bfloat16}
    for path in [*folder.iterdir(), text]:
        assert path.stat().st_mode & 0o777 == 0o640, path  # safetensors alone writes 0600


def test_a_gold_letter_never_matches_an_empty_answer():
    assert token_f1("", "A") == 0.0 and token_f1("A", "A") == 1.0 and token_f1("a.", "A") == 1.0
    assert token_f1("The cat", "cat") == 1.0  # SQuAD's article rule elsewhere
    metric = ExactMatch()
    metric.update(["", "B"], [["A"], ["B"]])
    assert metric.compute().item() == pytest.approx(0.5)


def test_a_sweep_rerun_skips_finished_runs_and_resumes_stopped_ones(tmp_path):
    commands = sweep_commands([QUICKSTART], [0, 1, 2], None, str(tmp_path), [])
    runs = [tmp_path / "quickstart_random" / f"seed{s}" for s in (0, 1, 2)]
    (runs[0] / "adapter").mkdir(parents=True)
    (runs[0] / "adapter" / "adapter_config.json").write_text("{}")
    (runs[0] / "checkpoints").mkdir()
    (runs[0] / "checkpoints" / "last.ckpt").write_bytes(b"")
    (runs[1] / "checkpoints").mkdir(parents=True)
    (runs[1] / "checkpoints" / "last.ckpt").write_bytes(b"")
    actions = [plan(c) for c in commands]
    assert [a for a, _ in actions] == ["skip", "resume", "run"]
    assert actions[1][1][-1] == f"--ckpt_path={runs[1] / 'checkpoints' / 'last.ckpt'}"
    assert actions[2][1] == commands[2]
    assert "two adapters share a run name" in _error(
        lambda: sweep_commands([QUICKSTART], [0], ["lora", "x/lora.yaml"], str(tmp_path), [])
    )
    assert "give at least one seed" in _error(
        lambda: sweep_commands([QUICKSTART], [], None, str(tmp_path), [])
    )


# --- through the command: one line, exit 2, nothing written --------------------------------------
FAST_COMMANDS = [
    (["fitt"], "unknown command 'fitt'"),
    (["fit", "--config", "/nonexistent.yaml"], "--config /nonexistent.yaml: no such file"),
    (["import", "--nope", "1"], "unrecognized arguments: --nope 1 (see ssmlora import --help)"),
    (["report", "--runs", "/nonexistent"], "does not exist"),
    (["export", "--checkpoint", "RANDOM", "--out", "OUT"], "RANDOM is not a checkpoint"),
    (["export", "--checkpoint", "/nonexistent.ckpt", "--out", "OUT"], "no such file"),
]


@pytest.mark.parametrize(
    ("args", "message"), FAST_COMMANDS, ids=[" ".join(a) for a, _ in FAST_COMMANDS]
)
def test_bad_commands_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "random.ckpt").write_bytes(os.urandom(1024))
    subst = {"RANDOM": str(tmp_path / "random.ckpt"), "OUT": str(tmp_path / "out")}
    with pytest.raises(SystemExit) as info:
        main([subst.get(a, a) for a in args])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("ssmlora: error: "), err
    assert message.replace("RANDOM", subst["RANDOM"]) in err
    assert not (tmp_path / "out").exists()


FIT_INPUTS = [  # (max_epochs=0, an output path that is a file: their checks are tested above)
    (["fit", "--model.optimizer.init_args.lr=-1"], "Invalid learning rate: -1.0"),
    (["fit", "--ckpt_path=RANDOM"], "is not a checkpoint"),
    (["predict"], "predict needs a trained model"),
    (
        ["fit", "--trainer.max_epochs=abc"],
        "trainer.max_epochs: expected int, (see ssmlora fit --help)",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), FIT_INPUTS, ids=[" ".join(a) for a, _ in FIT_INPUTS])
def test_bad_run_input_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, args, message):
    (tmp_path / "random.ckpt").write_bytes(os.urandom(1024))
    extra = [a.replace("RANDOM", str(tmp_path / "random.ckpt")) for a in args[1:]]
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as info:
        main(
            [args[0], "--config", QUICKSTART, f"--trainer.logger.init_args.save_dir={runs}", *extra]
        )
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and message in err
    assert len(err.splitlines()) == 1 and err.startswith("ssmlora: error: "), err
    assert not runs.exists(), "a refused command left a run folder"


@pytest.mark.slow
def test_a_run_is_final_fitted_once_and_evaluated_inside(tmp_path, capsys):
    """last.ckpt is the end of fit (not the last multiple of every_n_train_steps), equal to the
    adapter; a second fit into the folder is refused; predict needs the checkpoint and writes a new
    folder inside the run; no other run folder appears."""
    runs = tmp_path / "runs"
    common = ["--config", QUICKSTART, f"--trainer.logger.init_args.save_dir={runs}",
              "--trainer.logger.init_args.version=v", "--trainer.enable_progress_bar=false",
              "--data.max_train_samples=64", "--data.max_eval_samples=32"]  # fmt: skip
    fit = ["fit", *common, "--trainer.max_epochs=2", "--checkpoint.every_n_train_steps=3"]
    main(fit)  # 2 epochs x 2 steps: Lightning's last.ckpt would stay at step 3
    run = runs / "quickstart_random" / "v"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    lora = {k: v for k, v in last["state_dict"].items() if ".lora_" in k}
    assert lora and len(lora) == len([k for k in adapter if ".lora_" in k])
    for key, value in lora.items():
        assert torch.equal(adapter["base_model.model." + key.removeprefix("model.")], value), key
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(fit)
    assert info.value.code == 2
    assert f"{run} already holds a run (it is finished)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", *common[:3]])
    assert "predict needs a trained model" in capsys.readouterr().err
    main(["predict", *common[:3], f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    predictions = [p.name for p in run.iterdir() if p.name.startswith("predictions")]
    assert predictions == ["predictions"] and any((run / "predictions").iterdir())
    assert [p.name for p in (runs / "quickstart_random").iterdir()] == ["v"]


def test_import_keeps_the_task_s_label_names_and_never_overwrites(tmp_path, capsys):
    fields = {**TINY_ROBERTA, "vocab_size": 260}  # the byte tokenizer's 258 tokens
    lora = PeftLoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"])
    peft_model = get_peft_model(tiny_classifier(fields, num_labels=3), lora)
    peft_model.save_pretrained(tmp_path / "peft")
    byte_tokenizer().save_pretrained(tmp_path / "tokenizer")
    args = ["import", "--source", str(tmp_path / "peft"), "--out", str(tmp_path / "ours"),
            "--backbone.config", json.dumps(fields), "--task", "mnli",
            "--backbone.tokenizer", str(tmp_path / "tokenizer")]  # fmt: skip
    main(args)
    meta = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert meta["ssmlora"]["label_names"] == ["entailment", "neutral", "contradiction"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)  # the folder now holds the adapter
    assert info.value.code == 2
    assert "already holds adapter_config.json" in capsys.readouterr().err
    main([*args, "--overwrite", "true"])
