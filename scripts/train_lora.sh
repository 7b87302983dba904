#!/bin/sh
# Train a LoRA (rank 128, alpha 64) on the image model and the T5 text encoder; the result
# output_dir_lora/lora.safetensors is in the original kohya format (models/Personalized_Model/).
# For a LoRA on the video model, pass --config_path config/easyanimate_video_motion_module_v1.yaml
# --motion_module_path models/Motion_Module/easyanimate_v1_mm.safetensors and a video dataset.
set -eu
export MODEL_NAME="${MODEL_NAME:-models/Diffusion_Transformer/PixArt-XL-2-512x512}"
export DATASET_NAME="${DATASET_NAME:-datasets/diffusers_images/}"
export DATASET_META_NAME="${DATASET_META_NAME:-}"
train_data_format="${train_data_format:-diffusers}"

accelerate launch --mixed_precision="${MIXED_PRECISION:-bf16}" train_lora.py \
  --pretrained_model_name_or_path="$MODEL_NAME" \
  --train_data_dir="$DATASET_NAME" ${DATASET_META_NAME:+--train_data_meta="$DATASET_META_NAME"} \
  --train_data_format="$train_data_format" --caption_column="text" \
  --config_path "config/easyanimate_image_normal_v1.yaml" \
  --sample_size=512 --train_text_encoder --train_batch_size=2 --dataloader_num_workers=8 \
  --max_train_steps=2500 --checkpointing_steps=500 \
  --validation_prompts="1girl, bangs, blue eyes, blunt bangs, blurry, blurry background, bob cut, depth of field, lips, looking at viewer, motion blur, nose, realistic, red lips, shirt, short hair, solo, white shirt." \
  --validation_steps=100 --learning_rate=1e-04 --seed=42 --output_dir="output_dir_lora" \
  --gradient_checkpointing --mixed_precision="${MIXED_PRECISION:-bf16}" "$@"
