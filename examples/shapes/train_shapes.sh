#!/bin/sh
# The whole recipe of the shapes demo model, EasyAnimate's own method at toy scale, on CPU:
#   1. data   the shapes clips (mp4 + normal-format json), held-out combinations excluded
#   2. vae    a toy SD-style VAE on the frames (the one trainer outside train.py)
#   3. base   PixArt folder: tiny tokenizer, frozen random tiny T5, the VAE, an untrained transformer
#   4. t2i    train.py: the whole image model on frames            (examples/shapes/configs/t2i.yaml)
#   5. t2v    train.py: the motion modules on clips, image frozen  (examples/shapes/configs/t2v.yaml)
#   6. lora   train_lora.py: a dark-background style LoRA           (examples/shapes/configs/lora.yaml)
#   7. release into models/ (the default demo model), then examples.shapes.evaluate
# Everything follows from SEED; about 23 minutes on 2 CPU cores. Outputs go to OUT (default
# output_dir/shapes), the dataset to DATA (default datasets/shapes), the release to MODELS (default models).
# Any further arguments are passed to every train.py / train_lora.py call (e.g. --max_train_steps 50).
# VARIANT=long builds the long-clip demo model instead (EasyAnimate-Shapes-Long): the world of
# examples/shapes/configs/world_long.yaml, 8000 t2v steps instead of 1600, outputs in output_dir/shapes_long and
# datasets/shapes_long by default; about 59 minutes (measured, SEED=42).
set -eu
VARIANT="${VARIANT:-demo}"
case "$VARIANT" in
  demo) world=examples/shapes/configs/world.yaml; t2v_steps=""; suffix="" ;;
  long) world=examples/shapes/configs/world_long.yaml; t2v_steps="--max_train_steps 8000"; suffix="_long" ;;
  *) echo "VARIANT is demo or long, got '$VARIANT'" >&2; exit 2 ;;
esac
SEED="${SEED:-42}"
OUT="${OUT:-output_dir/shapes$suffix}"
DATA="${DATA:-datasets/shapes$suffix}"
MODELS="${MODELS:-models}"
PYTHON="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# The training yamls name output_dir/shapes and datasets/shapes; the flags below point them at OUT and DATA.
paths="--pretrained_model_name_or_path $OUT/base --train_data_dir $DATA --seed $SEED"
stage() { echo "== $1 ($(date +%T))"; }

stage data
"$PYTHON" -m examples.shapes.make_dataset --world "$world" --output-dir "$DATA" --seed "$SEED"
stage vae
"$PYTHON" -m examples.shapes.vae --train_data_meta "$DATA/train.json" "$DATA/style.json" \
  --output_dir "$OUT/vae" --seed "$SEED"
stage base
"$PYTHON" -m examples.shapes.build init --vae "$OUT/vae" --output "$OUT/base" --seed "$SEED"
stage t2i
"$PYTHON" train.py --train_config examples/shapes/configs/t2i.yaml $paths --train_data_meta "$DATA/train.json" \
  --output_dir "$OUT/t2i" "$@"
stage t2v
"$PYTHON" train.py --train_config examples/shapes/configs/t2v.yaml $paths --train_data_meta "$DATA/train.json" \
  --transformer_path "$OUT/t2i/pixart_transformer.safetensors" --output_dir "$OUT/t2v" $t2v_steps "$@"
stage lora
"$PYTHON" train_lora.py --train_config examples/shapes/configs/lora.yaml $paths --train_data_meta "$DATA/style.json" \
  --transformer_path "$OUT/t2i/pixart_transformer.safetensors" \
  --motion_module_path "$OUT/t2v/motion_module.safetensors" --output_dir "$OUT/lora" "$@"
stage release
"$PYTHON" -m examples.shapes.build release --base "$OUT/base" --models_dir "$MODELS" \
  --transformer "$OUT/t2i/pixart_transformer.safetensors" --motion_module "$OUT/t2v/motion_module.safetensors" \
  --lora "$OUT/lora/lora.safetensors" --variant "$VARIANT" --world "$world"
stage done
if [ "$VARIANT" = long ]; then
  echo "evaluate with: $PYTHON -m examples.shapes.evaluate --models-dir $MODELS" \
    "--model $MODELS/Diffusion_Transformer/EasyAnimate-Shapes-Long --modes video long"
else
  echo "evaluate with: $PYTHON -m examples.shapes.evaluate --models-dir $MODELS"
fi
