"""ssmlora bench: the machinery on a tiny config (no timing assertions), the exponent fit, the CLI."""

import json
import math
import statistics
from dataclasses import replace

import pytest
import torch

from ssmlora_app.adapters import ADAPTERS
from ssmlora_app.cli import extra_commands, main
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tools.bench import (
    BASELINES,
    PRESETS,
    BenchPreset,
    FitSettings,
    fit_exponent,
    format_table,
    interleaved_times,
    peak_memory_mb,
    run_bench,
    write_outputs,
)

TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
}
TINY = BenchPreset(
    backbone=TINY_LLAMA,
    seq_lens=(8, 16),
    batch_size=2,
    cpu_seq_lens=(8, 16),
    cpu_batch_size=2,
    lora_targets=("q_proj", "v_proj"),
    methods=PRESETS["llama-tiny"].methods,  # every method but SDT (Mamba only)
    scan_seq_lens=(8, 16),
    scan_d_state=4,
    method_options={"hrm": {"d_state": 4}},
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared CPU, OpenMP threads waiting for busy cores make each op
    many times slower (and ``bench --threads`` changes the process's setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_result(one_thread):
    return run_bench("tiny", TINY, warmup=0, repeats=1)


@pytest.mark.slow
def test_tiny_bench_measures_every_available_method(tiny_result):
    methods = {r["method"] for r in tiny_result.rows}
    assert {
        "frozen",
        "full",
        "lora",
        "peft_lora",
        "hrm_fft",
        "hrm_chunked",
        "hrm_sequential",
    } <= methods
    assert {"ssmlora_attention_sparse", "ssmlora_full_model"} <= methods
    assert not [r for r in methods if r.startswith("sdt")]  # no Mamba here: skipped with a note
    assert {r["seq_len"] for r in tiny_result.rows} == {8, 16}
    for row in tiny_result.rows:
        assert row["train_s"]["median"] > 0 and row["infer_s"]["median"] > 0
        assert len(row["train_s"]["samples"]) == 1
    by = {(r["method"], r["seq_len"]): r for r in tiny_result.rows}
    lora = by["lora", 8]
    assert lora["train_vs_lora"] == 1.0
    assert by["hrm_fft", 8]["train_vs_lora"] == pytest.approx(
        by["hrm_fft", 8]["train_s"]["median"] / lora["train_s"]["median"]
    )
    # trainable parameters: our LoRA and peft's on the same targets agree; full trains all
    assert by["lora", 8]["trainable_params"] == by["peft_lora", 8]["trainable_params"]
    assert by["frozen", 8]["trainable_params"] < by["lora", 8]["trainable_params"]
    assert by["full", 8]["trainable_params"] > 10 * by["lora", 8]["trainable_params"]
    assert set(tiny_result.exponents) >= {"lora", "hrm_fft", "scan_fft", "scan_sequential"}


@pytest.mark.slow
def test_lora_full_model_rows_sit_where_ssmlora_full_model_does(tiny_result):
    """``lora_full_model_same`` adapts exactly SSMLoRA full_model's linears: the same parameters
    less W_c and W_d (2r² per module); ``_paper`` adds key/value/output on every layer (the SSMLoRA paper's baseline)."""
    by = {r["method"]: r["trainable_params"] for r in tiny_result.rows if r["seq_len"] == 8}
    # tiny Llama, 2 layers: q (layer 0) or v (layer 1), o, gate, up, down per layer + score head
    modules = 2 * 5 + 1
    assert by["lora_full_model_same"] == by["ssmlora_full_model"] - modules * 2 * 8**2
    assert by["lora_full_model_paper"] > by["lora_full_model_same"]
    # attention_sparse: q at layer 0, v at layer 1; the head is trained fully in both rows
    assert by["lora_attention_sparse_same"] == by["ssmlora_attention_sparse"] - 2 * 2 * 8**2


@pytest.mark.slow
def test_ssmlora_rows_carry_ratios_to_lora_on_the_same_linears(tiny_result):
    by = {(r["method"], r["seq_len"]): r for r in tiny_result.rows}
    for preset, same in (("full_model", "lora_full_model_same"),
                         ("attention_sparse", "lora_attention_sparse_same")):  # fmt: skip
        row, base = by[f"ssmlora_{preset}", 16], by[same, 16]
        assert row["train_vs_same"] == pytest.approx(
            row["train_s"]["median"] / base["train_s"]["median"]
        )
        assert row["infer_vs_same"] == pytest.approx(
            row["infer_s"]["median"] / base["infer_s"]["median"]
        )
    assert by["lora", 16]["train_vs_same"] is None


@pytest.mark.slow
def test_scan_rows_compare_chunked_fft_and_sequential(tiny_result):
    comps = {(r["component"], r["seq_len"]): r for r in tiny_result.scan_rows}
    names = ("scan_fft", "scan_chunked", "scan_sequential", "lora_bypass")
    assert set(comps) == {(c, n) for c in names for n in (8, 16)}
    seq = comps["scan_sequential", 16]
    for path in ("fft", "chunked"):
        assert seq[f"{path}_speedup"] == pytest.approx(
            seq["fwd_bwd_s"]["median"] / comps[f"scan_{path}", 16]["fwd_bwd_s"]["median"]
        )
    assert comps["lora_bypass", 8]["vs_lora_bypass"] == 1.0


@pytest.mark.slow
def test_outputs_table_json_and_png(tiny_result, tmp_path):
    paths = write_outputs(tiny_result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["preset"] == "tiny" and data["memory_method"]
    assert len(data["rows"]) == len(tiny_result.rows)
    keys = {"method", "seq_len", "train_s", "infer_s", "train_peak_mb", "train_vs_lora"}
    assert keys <= set(data["rows"][0])
    pytest.importorskip("matplotlib")
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = format_table(tiny_result)
    for method in ("lora", "peft_lora", "hrm_fft", "scan_sequential"):
        assert method in table
    assert "fitted time ∝ L^p" in table


def test_peak_memory_sees_a_large_allocation():
    size_mb = 64

    def allocate():
        x = torch.ones(size_mb * 2**20 // 4)  # 64 MiB of fp32, touched
        return float(x[-1])

    small = peak_memory_mb(lambda: torch.ones(16).sum(), torch.device("cpu"))
    big = peak_memory_mb(allocate, torch.device("cpu"))
    if big is None:
        pytest.skip("no /proc/self/clear_refs here: CPU peak memory is reported as unavailable")
    assert size_mb * 0.9 <= big <= size_mb * 1.5 + small


def test_interleaved_times_order_rotates():
    calls = []
    times = interleaved_times(
        {n: (lambda n=n: calls.append(n)) for n in "abc"}, 1, 3, torch.device("cpu")
    )
    assert calls == list("abc" + "abc" + "bca" + "cab")
    assert set(times) == set("abc") and all(len(t.samples) == 3 for t in times.values())


@pytest.mark.parametrize("p", [1.0, 2.0, 0.5])
def test_exponent_fit_recovers_power_laws(p):
    lengths = [512, 1024, 2048, 4096, 8192, 16384]
    assert fit_exponent(lengths, [3e-6 * n**p for n in lengths]) == pytest.approx(p)


def test_exponent_fit_of_l_log_l_is_slightly_above_one():
    lengths = [512, 1024, 2048, 4096, 8192, 16384]
    p = fit_exponent(lengths, [n * math.log(n) for n in lengths])
    assert 1.05 < p < 1.2
    assert fit_exponent([512], [1.0]) is None


def test_preset_without_its_adapter_is_skipped_with_a_note(monkeypatch):
    preset = replace(TINY, requires_adapter="no-such-adapter")
    result = run_bench("tiny", preset, warmup=0, repeats=1)
    assert result.rows == [] and "no-such-adapter" in result.notes[0]


def test_out_of_memory_skips_the_longer_lengths_with_a_note(monkeypatch):
    """Seen on an H100 (llama-1b-shapes, fp32, 16k tokens): one length that does not fit must not
    lose the rows measured before it; the lengths left out are named in a note."""
    import ssmlora_app.tools.bench as bench

    def measure(real, what):
        def wrapped(*args, **kwargs):
            lengths = args[1] if what == "models" else args[0]
            if max([lengths] if isinstance(lengths, int) else lengths) >= 16:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 32.00 GiB")
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(bench, "measure_models", measure(bench.measure_models, "models"))
    monkeypatch.setattr(bench, "measure_scan", measure(bench.measure_scan, "scan"))
    result = run_bench("tiny", TINY, methods=["lora"], warmup=0, repeats=1)
    assert {r["seq_len"] for r in result.rows} == {8}
    assert {r["seq_len"] for r in result.scan_rows} == {8}
    assert any(
        "whole-model rows at seq_len [16] not measured: out of memory" in n for n in result.notes
    )
    assert any("scan rows at seq_len [16] not measured" in n for n in result.notes)


def test_unknown_method_or_clock_is_an_error():
    with pytest.raises(SsmloraError, match="Unknown bench method"):
        run_bench("tiny", TINY, methods=["lora", "nope"], warmup=0, repeats=1)
    with pytest.raises(SsmloraError, match="clock"):
        run_bench("tiny", TINY, clock="sundial", warmup=0, repeats=1)


def test_presets_build_their_backbones_on_meta():
    from transformers import AutoConfig

    for name, preset in PRESETS.items():
        assert set(preset.methods) <= set(BASELINES) | set(ADAPTERS) | {"hrm_fft"}, name
        assert bool(preset.weights) != bool(preset.backbone), name  # real weights or a shape
        assert (preset.fit is None) or preset.weights, name  # fit reads the real tokenizer
        if preset.weights:
            continue
        fields = dict(preset.backbone)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        assert config.hidden_size == fields["hidden_size"], name


def test_cli_bench_parses_and_rejects_bad_input(capsys):
    assert "bench" in extra_commands()
    with pytest.raises(SystemExit) as err:
        main(["bench", "--help"])
    assert err.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--preset", "--seq_lens", "--methods", "--repeats", "--threads", "--out"):
        assert option in help_text
    with pytest.raises(SystemExit) as err:
        main(["bench", "--preset", "no-such-preset"])
    assert err.value.code == 2
    assert "Unknown bench preset" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_bench_runs_a_tiny_measurement(tmp_path, capsys):
    main(
        [
            "bench",
            "--preset=llama-tiny",
            "--methods=[lora,hrm_fft]",
            "--seq_lens=[16]",
            "--scan_seq_lens=[]",
            "--batch_size=1",
            "--warmup=0",
            "--repeats=1",
            "--threads=1",
            "--clock=cpu",
            f"--out={tmp_path}",
        ]
    )
    out = capsys.readouterr().out
    assert "hrm_fft" in out and "Written:" in out
    data = json.loads((tmp_path / "bench_llama-tiny.json").read_text())
    assert {r["method"] for r in data["rows"]} == {"lora", "hrm_fft"}
    assert data["scan_rows"] == [] and "--seq_lens [16]" in data["command"]
    assert data["clock"] == "cpu" and "cpu clock" in out


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.weights])
def test_real_weights_preset_without_its_folder_is_skipped_in_one_line(name, tmp_path, capsys):
    result = run_bench(name, PRESETS[name], weights=tmp_path, warmup=0, repeats=1)
    assert result.rows == result.fit_rows == [] and len(result.notes) == 1
    assert str(tmp_path / PRESETS[name].weights) in result.notes[0]
    assert "make weights" in result.notes[0]
    main(["bench", f"--preset={name}", f"--weights={tmp_path}", f"--out={tmp_path / 'out'}"])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "skipped" in line] == [f"note: {result.notes[0]}"]


@pytest.mark.real
@pytest.mark.slow
def test_real_weights_rows_and_fit_against_the_bare_step(real_weights):
    """MiniLM from ``make weights``: the rows are the real model's, and ``ssmlora fit`` ran the
    configured steps on the quickstart's text, then the bare loop replayed them."""
    preset = replace(
        PRESETS["minilm"],
        cpu_seq_lens=(16,),
        cpu_batch_size=4,
        fit=FitSettings(batch_size=8, max_length=32, warmup=1, steps=3, log_every_n_steps=2),
    )
    result = run_bench(
        "minilm", preset, methods=["lora", "ssmlora"], weights=real_weights, warmup=0,
        repeats=1, fit_rounds=2,
    )  # fmt: skip
    by = {r["method"]: r for r in result.rows}
    assert set(by) == {"lora", "ssmlora_attention_sparse", "ssmlora_full_model"}
    # LoRA r=8 on query and value of MiniLM's 6 layers (hidden 384), and its 2-label head
    assert by["lora"]["trainable_params"] == 6 * 2 * 8 * (384 + 384) + 384 * 2 + 2
    assert by["ssmlora_full_model"]["train_vs_lora"] > 0
    (fit,) = result.fit_rows
    assert fit["rounds"] == 2 and len(fit["overhead_per_round"]) == 2
    assert len(fit["fit_step_s"]["samples"]) == len(fit["bare_step_s"]["samples"]) == 2
    assert fit["fit_step_s"]["median"] > 0 and fit["bare_step_s"]["median"] > 0
    assert fit["overhead"] == pytest.approx(
        statistics.median(1 + o for o in fit["overhead_per_round"]) - 1
    )
    assert 2 < fit["mean_padded_length"] <= 32
    words = fit["example"].split()  # the quickstart's sentences, read by MiniLM's WordPiece
    assert len(words) >= 2 and all(w.isalpha() or w in ".,!'" for w in words), fit["example"]
    assert "ssmlora fit (lora, quickstart, batch 8" in format_table(result)
