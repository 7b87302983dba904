#!/bin/sh
# Fine-tune the whole image (PixArt) model on images; the result can be used as a personalized
# base model (output_dir_t2i/pixart_transformer.safetensors -> models/Personalized_Model/).
# train_data_format: diffusers (folder with metadata.jsonl) or normal (json list).
set -eu
export MODEL_NAME="${MODEL_NAME:-models/Diffusion_Transformer/PixArt-XL-2-512x512}"
export DATASET_NAME="${DATASET_NAME:-datasets/diffusers_images/}"
export DATASET_META_NAME="${DATASET_META_NAME:-}"
train_data_format="${train_data_format:-diffusers}"

accelerate launch --mixed_precision="${MIXED_PRECISION:-bf16}" train.py \
  --pretrained_model_name_or_path="$MODEL_NAME" \
  --train_data_dir="$DATASET_NAME" ${DATASET_META_NAME:+--train_data_meta="$DATASET_META_NAME"} \
  --train_data_format="$train_data_format" --caption_column="text" \
  --config_path "config/easyanimate_image_normal_v1.yaml" \
  --sample_size=512 --train_batch_size=2 --gradient_accumulation_steps=1 --dataloader_num_workers=8 \
  --num_train_epochs=50 --checkpointing_steps=500 \
  --validation_prompts="1girl, bangs, blue eyes, blunt bangs, blurry, blurry background, bob cut, depth of field, lips, looking at viewer, motion blur, nose, realistic, red lips, shirt, short hair, solo, white shirt." \
  --validation_steps=100 --learning_rate=1e-05 --lr_scheduler="constant_with_warmup" --lr_warmup_steps=50 \
  --seed=42 --max_grad_norm=1 --output_dir="output_dir_t2i" --gradient_checkpointing \
  --mixed_precision="${MIXED_PRECISION:-bf16}" --use_ema --trainable_modules "." "$@"
