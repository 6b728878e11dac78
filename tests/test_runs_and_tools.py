"""The run folder (one reader of what a run leaves), the one model factory shared by training and
export (a causal-LM run exports a causal LM with its LM head), and the tools layer's rule: the
training path never imports ``ssmlora_app.tools``."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from ssmlora_app.adapters import LoRAConfig, load_adapter
from ssmlora_app.backbone import BackboneConfig, build_causal_lm, generation_tokens
from ssmlora_app.cli import main
from ssmlora_app.run import RunFolder, RunRecord, read_checkpoint
from ssmlora_app.tasks import CustomTask, TaskInfo
from ssmlora_app.tasks.vocab import byte_tokenizer
from tests.conftest import REPO

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64}  # fmt: skip


def test_a_record_round_trips_and_reads_older_task_infos():
    info = TaskInfo("t", 2, "single_label_classification", ("accuracy",), ("validation",),
                    objective="lm_generate", max_new_tokens=8, label_names=("a", "b"))  # fmt: skip
    record = RunRecord(BackboneConfig(config={"model_type": "llama"}), LoRAConfig(r=4), info,
                       params={"params/trainable": 10})  # fmt: skip
    again = RunRecord.from_hparams(json.loads(json.dumps(record.to_hparams())), "test")
    assert again == record
    old = {**info.to_record(), "objective": "causal_lm", "lm_eval": "teacher_forced"}
    assert TaskInfo.from_record(old).objective == "lm_teacher_forced"  # hparams of older runs
    # SQuAD's post-processing was saved as ``eval_options`` before it joined ``metric_options``
    squad = {"version_2": True, "max_answer_length": 7, "n_best_size": 5,
             "null_score_diff_threshold": 1.5}  # fmt: skip
    older = {**info.to_record(), "eval_options": squad, "metric_options": None}
    assert TaskInfo.from_record(older).metric_options == squad
    both = {**older, "metric_options": {"database_dir": "db"}}
    assert TaskInfo.from_record(both).metric_options == {**squad, "database_dir": "db"}
    assert "eval_options" not in info.to_record()


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A short LoRA fit of a tiny Llama on prompt/completion rows: a causal-LM run folder."""
    root = tmp_path_factory.mktemp("lm")
    rows = [{"prompt": f"Q: {i}+1?\nA:", "completion": f" {i + 1}"} for i in range(12)]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"class_path": "ssmlora_app.tasks.CustomTask",
            "init_args": {"train_file": str(root / "sft.jsonl"), "task_type": "causal_lm",
                          "validation_ratio": 0.25}}  # fmt: skip
    adapter = {"class_path": "ssmlora_app.adapters.LoRAConfig",
               "init_args": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}  # fmt: skip
    main(["fit", f"--model.backbone.config={json.dumps(TINY_LLAMA)}",
          f"--model.adapter={json.dumps(adapter)}", f"--data.task={json.dumps(task)}",
          "--data.objective=causal_lm", "--data.max_length=32", "--data.batch_size=4",
          "--model.optimizer.init_args.lr=0.05", "--trainer.max_steps=3",
          f"--trainer.logger.init_args.save_dir={root}", "--trainer.logger.init_args.name=lm",
          "--trainer.logger.init_args.version=v", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false"])  # fmt: skip
    return RunFolder.at(root, "lm", "v")


@pytest.mark.slow
def test_the_run_folder_reads_what_fit_wrote(lm_run):
    record = lm_run.record()
    assert record.task_info.objective == "lm_teacher_forced" and record.adapter.r == 4
    assert record.params["params/trainable"] == record.params["params/adapter"] > 0
    assert isinstance(lm_run.task(), CustomTask) and lm_run.task().task_type == "causal_lm"
    assert lm_run.has_adapter() and lm_run.event_files()
    assert lm_run.scalars()["val/token_accuracy"][-1][0] == 2  # logged at the last step
    checkpoint_record, state = read_checkpoint(lm_run.last_checkpoint)
    assert checkpoint_record == record
    assert state and all(".lora_" in key for key in state)


@pytest.mark.slow
def test_a_causal_lm_run_exports_a_causal_lm_with_its_head(lm_run, tmp_path):
    main(["export", f"--run={lm_run.path}", f"--out={tmp_path}"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    # The trained model rebuilt by hand: the seeded config backbone + the exported adapter.
    tokenizer = byte_tokenizer()
    reference = build_causal_lm(
        BackboneConfig(config=TINY_LLAMA), len(tokenizer), tokenizer.pad_token_id,
        generation_tokens(tokenizer),
    )  # fmt: skip
    frozen = torch.clone(reference(input_ids=torch.tensor([[5, 6, 7]])).logits.detach())
    reference = load_adapter(reference, lm_run.adapter_dir).eval()
    ids = torch.tensor([[5, 60, 70, 80, 90, 100, 3]])
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-4)
        assert expected.shape[-1] == len(tokenizer)  # next-token logits, not 1-2 class scores
        trained = reference(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert not torch.allclose(trained, frozen, atol=1e-5)  # the adapter changed the model
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert (
        saved["architectures"] == ["LlamaForCausalLM"] and saved["ssmlora_merged_adapter"] == "lora"
    )
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


TRAINING_PATH = """
import sys
import ssmlora_app.adapters, ssmlora_app.callbacks, ssmlora_app.data, ssmlora_app.module
import ssmlora_app.objectives, ssmlora_app.tasks
from ssmlora_app.cli import main
main(["fit", "--config", "configs/quickstart_random.yaml", "--trainer.max_steps=1",
      "--trainer.limit_val_batches=1", "--data.max_train_samples=32",
      "--data.max_eval_samples=8", "--trainer.logger.init_args.save_dir=" + sys.argv[1],
      "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
print(sorted(m for m in sys.modules if m.startswith("ssmlora_app.tools")))
"""


@pytest.mark.slow
def test_the_training_path_never_imports_the_tools(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", TRAINING_PATH, str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert list(tmp_path.glob("quickstart_random/version_0/adapter/adapter_model.safetensors"))


def test_the_tools_are_named_in_the_help_without_being_imported(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "export", "import", "report", "sweep",
                    "bench", "reduce"):  # fmt: skip
        assert f"\n  {command} " in out, command
