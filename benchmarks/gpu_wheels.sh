#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (python 3.12, manylinux x86_64, no network there) into
# .whl/ (git-ignored), for benchmarks/gpu_check.sh to install: `make gpu-wheels`.
# That machine has torch, lightning, transformers, peft, torchmetrics, tensorboard, safetensors,
# pandas, pyarrow (25.0.1 there, seen 2026-11-26), xxhash, requests, tqdm, click, joblib, regex,
# pyyaml, huggingface-hub and fsspec; these are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
wheels=(
  jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0  # jsonargparse[signatures]
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19                      # datasets' missing deps
  mambapy==1.2.0                                                          # Mamba's parallel scan
  gguf==0.19.0                                                            # GGUF backbones
  nltk==3.10.4 defusedxml==0.7.1                                          # the scorers' tokenizer/stemmer
  bitsandbytes==0.50.2                                                    # QLoRA's 4-bit layers (43 MB)
  pytest==8.4.2 pluggy==1.6.0 iniconfig==2.1.0 pygments==2.19.2          # the QLoRA tests on the GPU
)
rm -rf .whl
mkdir -p .whl
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
count=$(ls .whl/*.whl | wc -l)
kib=$(du -sk .whl | cut -f1)
if [ "$count" -ne "${#wheels[@]}" ] || [ "$kib" -gt 57344 ]; then
  echo "gpu-wheels: expected ${#wheels[@]} wheels under 56 MiB, got $count in $kib KiB" >&2
  exit 1
fi
echo "gpu-wheels: $count wheels, $kib KiB in .whl/ (the device tree limit is 64 MiB)"
