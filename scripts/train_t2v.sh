#!/bin/sh
# Train the motion module on videos (the image model stays frozen). Edit the settings below or
# set them in the environment; add any train.py flag at the end of the command line, e.g.
#   DATASET_NAME=datasets/webvid/videos/ DATASET_META_NAME=datasets/webvid/csv_of_webvid.csv \
#   train_data_format=webvid sh scripts/train_t2v.sh --max_train_steps 1000
# Several GPUs or machines: configure `accelerate config` once; nothing else changes.
set -eu
export MODEL_NAME="${MODEL_NAME:-models/Diffusion_Transformer/PixArt-XL-2-512x512}"
export DATASET_NAME="${DATASET_NAME:-datasets/internal_datasets/}"
export DATASET_META_NAME="${DATASET_META_NAME:-datasets/internal_datasets/json_of_internal_datasets.json}"
train_data_format="${train_data_format:-normal}"
export NCCL_IB_DISABLE=1
export NCCL_P2P_DISABLE=1

accelerate launch --mixed_precision="${MIXED_PRECISION:-bf16}" train.py \
  --pretrained_model_name_or_path="$MODEL_NAME" \
  --train_data_dir="$DATASET_NAME" \
  --train_data_meta="$DATASET_META_NAME" \
  --train_data_format="$train_data_format" \
  --config_path "config/easyanimate_video_motion_module_v1.yaml" \
  --sample_size=512 --sample_stride=2 --sample_n_frames=16 \
  --train_batch_size=2 --gradient_accumulation_steps=1 --dataloader_num_workers=8 \
  --num_train_epochs=100 --checkpointing_steps=500 \
  --validation_prompts="A girl with delicate face is smiling." --validation_steps=100 \
  --learning_rate=2e-05 --lr_scheduler="constant_with_warmup" --lr_warmup_steps=100 \
  --seed=42 --output_dir="output_dir" --gradient_checkpointing --mixed_precision="${MIXED_PRECISION:-bf16}" \
  --adam_weight_decay=3e-2 --adam_epsilon=1e-10 --max_grad_norm=1 --vae_mini_batch=16 \
  --use_ema --trainable_modules "attn_temporal" "$@"
