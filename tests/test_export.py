"""ssmlora export / import: merged HF model with the same logits, peft-loadable adapter, foreign
LoRA formats (peft folders, loralib state dicts) mapped onto our modules."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from ssmlora_app.adapters import HRMConfig, inject_adapters, load_adapter, save_adapter
from ssmlora_app.adapters.interop import load_foreign_lora
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.cli import main
from ssmlora_app.data.datamodule import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.run import RunFolder
from tests.conftest import REPO, TINY_ROBERTA
from tests.helpers import randomise, tiny_classifier, twin

IDS = torch.tensor([[0, 5, 17, 42, 2], [0, 9, 33, 2, 1]])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real (short) quickstart fit: hparams.yaml, adapter/ and checkpoints/last.ckpt."""
    root = tmp_path_factory.mktemp("runs")
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart_random.yaml"),
            f"--trainer.logger.init_args.save_dir={root}",
            "--trainer.logger.init_args.version=v",
            "--trainer.max_epochs=1",
            "--data.max_train_samples=96",
            "--data.max_eval_samples=32",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    return root / "quickstart_random" / "v"


def reference(run):
    """The trained model rebuilt by hand: the recorded backbone + the saved adapter."""
    hparams = RunFolder(run).hparams()
    info = hparams["task_info"]
    backbone = BackboneConfig(**hparams["backbone"])
    model = build_classifier(
        backbone, info["num_labels"], info["problem_type"], info["vocab_size"], info["pad_token_id"]
    )
    return load_adapter(model, run / "adapter").eval(), backbone


@pytest.mark.slow
def test_merged_model_loads_with_automodel_and_gives_the_same_logits(run, tmp_path, capsys):
    main(["export", "--run", str(run), "--out", str(tmp_path / "out")])
    assert "merged:" in capsys.readouterr().out
    merged_dir = tmp_path / "out" / "merged"
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    batch = tokenizer(["good great film", "dull boring plot and bad actor"], padding=True)
    batch = {k: torch.tensor(v) for k, v in batch.items()}
    model, _ = reference(run)
    with torch.no_grad():
        expected = model(**batch).logits
        got = merged(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # The merge changed the weights (the adapter was not a no-op).
    plain = build_classifier(
        BackboneConfig(**RunFolder(run).hparams()["backbone"]),
        2,
        "single_label_classification",
        vocab_size=merged.config.vocab_size,
        pad_token_id=1,
    )
    name = "roberta.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(plain.state_dict()[name], merged.state_dict()[name])


@pytest.mark.slow
def test_exported_adapter_loads_in_peft_and_checkpoint_gives_the_same(run, tmp_path):
    main(["export", "--run", str(run), "--out", str(tmp_path / "a"), "--merge=false"])
    assert not (tmp_path / "a" / "merged").exists()
    model, backbone = reference(run)
    base = build_classifier(
        backbone, 2, "single_label_classification", model.config.vocab_size, pad_token_id=1
    )
    peft_model = PeftModel.from_pretrained(base, tmp_path / "a" / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=IDS).logits, model(input_ids=IDS).logits)
    ckpt = run / "checkpoints" / "last.ckpt"
    main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "c"), "--merge=false"])
    from_run = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    from_ckpt = load_file(tmp_path / "c" / "adapter" / "adapter_model.safetensors")
    assert from_run.keys() == from_ckpt.keys()
    assert all(torch.equal(from_run[k], from_ckpt[k]) for k in from_run)


def test_hrm_exports_the_adapter_only(tmp_path, capsys):
    model = inject_adapters(tiny_classifier(), HRMConfig(d_state=4, gate_init=0.5))
    randomise(lambda n: n.endswith((".B", ".C", ".gate")) or n.startswith("classifier."), model)
    save_adapter(model, tmp_path / "hrm")
    backbone = json.dumps({"config": TINY_ROBERTA})
    main(
        [
            *("export", "--adapter", str(tmp_path / "hrm"), "--backbone", backbone),
            *("--out", str(tmp_path / "out")),
        ]
    )
    out = capsys.readouterr().out
    assert "merged: skipped (hrm adapters cannot be merged" in out
    assert not (tmp_path / "out" / "merged").exists()
    reloaded = load_adapter(tiny_classifier(), tmp_path / "out" / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=IDS).logits, model.eval()(input_ids=IDS).logits)


def loralib_state(base, r=4, prefix="module."):
    """A state dict in the LoRA authors' loralib layout: the whole model plus ``lora_A`` (r, d_in)
    and ``lora_B`` (d_out, r) directly on query/value, and a trained classifier."""
    generator = torch.Generator().manual_seed(3)
    state = {prefix + k: v.clone() for k, v in base.state_dict().items()}
    for layer in range(TINY_ROBERTA["num_hidden_layers"]):
        for proj in ("query", "value"):
            name = f"{prefix}roberta.encoder.layer.{layer}.attention.self.{proj}"
            d = TINY_ROBERTA["hidden_size"]
            state[f"{name}.lora_A"] = torch.randn(r, d, generator=generator) * 0.1
            state[f"{name}.lora_B"] = torch.randn(d, r, generator=generator) * 0.1
    for key in [k for k in state if ".classifier." in f".{k}"]:
        state[key] = torch.randn(state[key].shape, generator=generator) * 0.1
    return state


def test_loralib_state_dict_is_mapped_onto_our_modules(tmp_path):
    base = tiny_classifier()
    state = loralib_state(base)
    torch.save(state, tmp_path / "roberta_lora.bin")
    backbone = json.dumps({"config": TINY_ROBERTA})
    main(
        [
            *("import", "--source", str(tmp_path / "roberta_lora.bin")),
            *("--out", str(tmp_path / "ours")),
            *("--backbone", backbone, "--alpha", "16"),
        ]
    )
    imported = load_adapter(twin(base), tmp_path / "ours").eval()
    # Reference: W + (alpha / r) B A folded by hand, and the file's classifier.
    expected = twin(base)
    with torch.no_grad():
        for key, value in state.items():
            key = key.removeprefix("module.")
            if key.endswith(".lora_A"):
                module = key.removesuffix(".lora_A")
                delta = state[f"module.{module}.lora_B"] @ value * (16 / 4)
                expected.get_submodule(module).weight += delta
            elif key.startswith("classifier."):
                expected.state_dict()[key].copy_(value)
        assert torch.allclose(
            imported(input_ids=IDS).logits, expected(input_ids=IDS).logits, atol=1e-5
        )
    meta = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert meta["r"] == 4 and meta["lora_alpha"] == 16
    assert len(meta["target_modules"]) == 4


def test_peft_folders_import_even_from_a_bare_encoder(tmp_path):
    base = tiny_classifier()
    # A classifier adapter made with peft: same logits after import.
    peft_model = get_peft_model(
        twin(base), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    )
    randomise(lambda n: "lora_" in n, peft_model)
    peft_model.save_pretrained(tmp_path / "peft")
    ours = twin(base)
    config = load_foreign_lora(ours, tmp_path / "peft", load_head=False)
    assert (config.r, config.alpha) == (4, 8.0)
    with torch.no_grad():
        assert torch.allclose(
            ours.eval()(input_ids=IDS).logits, peft_model.eval()(input_ids=IDS).logits, atol=1e-6
        )
    # An adapter trained on the bare encoder (no "roberta." prefix) lands on our classifier.
    fields = dict(TINY_ROBERTA)
    encoder = AutoModel.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    bare = get_peft_model(encoder, LoraConfig(r=2, lora_alpha=4, target_modules=["key"]))
    randomise(lambda n: "lora_" in n, bare)
    bare.save_pretrained(tmp_path / "bare")
    target = twin(base)
    load_foreign_lora(target, tmp_path / "bare")
    got = target.roberta.encoder.layer[1].attention.self.key.lora_B.weight
    want = bare.base_model.model.encoder.layer[1].attention.self.key.lora_B.default.weight
    assert torch.equal(got, want)


def test_foreign_adapters_fail_clearly(tmp_path):
    base = tiny_classifier()
    torch.save(loralib_state(base), tmp_path / "lora.bin")
    with pytest.raises(SsmloraError, match="does not store lora_alpha"):
        load_foreign_lora(twin(base), tmp_path / "lora.bin")
    wider = tiny_classifier({**TINY_ROBERTA, "hidden_size": 64})
    with pytest.raises(SsmloraError, match="do not fit"):
        load_foreign_lora(wider, tmp_path / "lora.bin", alpha=8)
    torch.save({"encoder.foo.lora_A": torch.zeros(2, 3)}, tmp_path / "half.bin")
    with pytest.raises(SsmloraError, match="without their A/B partner"):
        load_foreign_lora(twin(base), tmp_path / "half.bin", alpha=8)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_predict_writes_label_files_that_match_the_model(run, tmp_path):
    out = tmp_path / "pred"
    main(
        [
            *("predict", "--config", str(run / "config.yaml")),
            *("--ckpt_path", str(run / "checkpoints" / "last.ckpt")),
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
            f"--predictions.output_dir={out}",
        ]
    )
    rows = [json.loads(line) for line in (out / "quickstart_validation.jsonl").open()]
    tsv = (out / "quickstart.tsv").read_text().splitlines()
    assert tsv[0] == "index\tprediction" and len(tsv) == len(rows) + 1 == 33
    assert [r["index"] for r in rows] == list(range(32))
    # The same predictions as the trained model on the same examples, in dataset order.
    model, _ = reference(run)
    data = TaskDataModule(task="quickstart", max_eval_samples=32, eval_batch_size=64)
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()[0]))
    labels = batch.labels
    with torch.no_grad():
        expected = model(**batch.inputs).logits.argmax(-1).tolist()
    assert [r["prediction"] for r in rows] == expected
    assert [int(line.split("\t")[1]) for line in tsv[1:]] == expected
    assert [r["label"] for r in rows] == labels.tolist()
