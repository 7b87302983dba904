#!/bin/sh
# Train a LoRA (rank 128, alpha 64) on the image model and the T5 text encoder; output_dir_lora/lora.safetensors
# is in the original kohya format (models/Personalized_Model/). The recipe is config/train/lora.yaml (it says
# how to train a LoRA on the video model); set the dataset variables below here or in the environment, and add
# any train_lora.py flag at the end. Under DeepSpeed add --no-train_text_encoder.
# Paths are relative to the repository root. MIXED_PRECISION=no|fp16|bf16 (default bf16).
set -eu
cd "$(dirname "$0")/.."
export MODEL_NAME="${MODEL_NAME:-models/Diffusion_Transformer/PixArt-XL-2-512x512}"
export DATASET_NAME="${DATASET_NAME:-datasets/diffusers_images/}"
export DATASET_META_NAME="${DATASET_META_NAME:-}"
train_data_format="${train_data_format:-diffusers}"
# Only on machines whose InfiniBand or peer-to-peer setup hangs NCCL (this slows every other run):
# export NCCL_IB_DISABLE=1 NCCL_P2P_DISABLE=1
ACCELERATE="${ACCELERATE:-$(if [ -x .venv/bin/accelerate ]; then echo .venv/bin/accelerate; else command -v accelerate || true; fi)}"
[ -n "$ACCELERATE" ] || { echo "error: accelerate not found: run 'sh scripts/setup.sh' (it makes .venv) or activate your environment" >&2; exit 2; }

"$ACCELERATE" launch --mixed_precision="${MIXED_PRECISION:-bf16}" train_lora.py --train_config config/train/lora.yaml \
  --pretrained_model_name_or_path="$MODEL_NAME" --train_data_dir="$DATASET_NAME" \
  ${DATASET_META_NAME:+--train_data_meta="$DATASET_META_NAME"} --train_data_format="$train_data_format" "$@"
