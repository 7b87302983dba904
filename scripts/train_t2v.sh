#!/bin/sh
# Train the motion module on videos (the image model stays frozen). The recipe is config/train/t2v.yaml;
# set the dataset variables below here or in the environment, and add any train.py flag at the end, e.g.
#   DATASET_NAME=datasets/webvid/videos/ DATASET_META_NAME=datasets/webvid/csv_of_webvid.csv \
#   train_data_format=webvid sh scripts/train_t2v.sh --max_train_steps 1000
# Paths are relative to the repository root. MIXED_PRECISION=no|fp16|bf16 (default bf16). Several GPUs or
# machines: run `accelerate config` once (two machines: config/accelerate_multinode_example.yaml).
set -eu
cd "$(dirname "$0")/.."
export MODEL_NAME="${MODEL_NAME:-models/Diffusion_Transformer/PixArt-XL-2-512x512}"
export DATASET_NAME="${DATASET_NAME:-datasets/internal_datasets/}"
export DATASET_META_NAME="${DATASET_META_NAME:-datasets/internal_datasets/json_of_internal_datasets.json}"
train_data_format="${train_data_format:-normal}"
# Only on machines whose InfiniBand or peer-to-peer setup hangs NCCL (this slows every other run):
# export NCCL_IB_DISABLE=1 NCCL_P2P_DISABLE=1
ACCELERATE="${ACCELERATE:-$(if [ -x .venv/bin/accelerate ]; then echo .venv/bin/accelerate; else command -v accelerate || true; fi)}"
[ -n "$ACCELERATE" ] || { echo "error: accelerate not found: run 'sh scripts/setup.sh' (it makes .venv) or activate your environment" >&2; exit 2; }

"$ACCELERATE" launch --mixed_precision="${MIXED_PRECISION:-bf16}" train.py --train_config config/train/t2v.yaml \
  --pretrained_model_name_or_path="$MODEL_NAME" --train_data_dir="$DATASET_NAME" \
  --train_data_meta="$DATASET_META_NAME" --train_data_format="$train_data_format" "$@"
