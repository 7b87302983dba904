#!/usr/bin/env bash
# Download the wheels that the device machine lacks into .whl/ (ignored by git), for benchmarks/gpu_check.sh.
# Its image has torch 2.11, transformers, accelerate, peft, safetensors, einops, sentencepiece, psutil, numpy,
# Pillow, PyYAML, huggingface-hub and the rest of their needs; it lacks diffusers and omegaconf (about 7 MB together).
# PyAV is imported only to write or read videos, so the check does without it (its wheel alone is 36 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
mkdir .whl
pins=$(grep -E '^(diffusers|omegaconf)==' requirements.txt)  # the versions everything else is tested with
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
du -sh .whl
