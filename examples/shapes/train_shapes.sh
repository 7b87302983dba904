#!/bin/sh
# The whole recipe of the shapes demo model, EasyAnimate's own method at toy scale, on CPU. Run it from
# the repository root: sh examples/shapes/train_shapes.sh
#   1. data     the shapes clips (mp4 + normal-format json), held-out combinations excluded
#   2. vae      a toy SD-style VAE on the frames (the one trainer outside train.py)
#   3. base     PixArt folder: tiny tokenizer, frozen random tiny T5, the VAE, an untrained transformer
#   4. t2i      train.py: the whole image model on frames            (configs/t2i.yaml)
#   5. t2v      train.py: the motion modules on clips, image frozen  (configs/t2v.yaml)
#   6. lora     train_lora.py: a dark-background style LoRA           (configs/lora.yaml)
#   7. inpaint  train.py --train_mode inpaint: the inpaint model from the t2i + t2v weights, mask and
#               masked-video channels added at zero, on the same clips (configs/inpaint.yaml; long variant only)
#   8. release  the released layout under MODELS (the long variant with the inpaint model), then
#               examples.shapes.evaluate
# Everything follows from SEED; about 31 minutes on 2 CPU cores. Settings (environment variables):
#   OUT      the stages' outputs (default output_dir/shapes)
#   DATA     the dataset (default datasets/shapes)
#   MODELS   where the release goes (default $OUT/models). The shipped models in models/ change only
#            when asked: MODELS=models, or the release command printed at the end.
#   VARIANT  demo (default) or long: the long-clip demo model (EasyAnimate-Shapes-Long), trained on
#            configs/world_long.yaml with 8000 t2v steps instead of 1600, and from it the inpaint model
#            (EasyAnimate-Shapes-Inpaint); OUT and DATA default to output_dir/shapes_long and
#            datasets/shapes_long; about 67 minutes (59 measured with a 6000-step t2i stage, SEED=42)
#            plus about 21 for the inpaint stage.
#   DRY_RUN  1: every stage shortened (one clip per combination, 20 steps per trainer) to check that the
#            recipe runs end to end: 4 minutes (measured, 2 shared cores); OUT and DATA default to
#            ..._dry_run folders, and MODELS=models is refused.
# Any further arguments are passed to every train.py / train_lora.py call (e.g. --max_train_steps 50).
set -eu
if [ ! -f train.py ] || [ ! -d examples/shapes ]; then
  echo "run from the repository root: sh examples/shapes/train_shapes.sh" >&2; exit 2
fi
VARIANT="${VARIANT:-demo}"
configs=examples/shapes/configs
case "$VARIANT" in
  demo) world=$configs/world.yaml; t2v_steps=""; suffix=""; inpaint=0 ;;
  long) world=$configs/world_long.yaml; t2v_steps="--max_train_steps 8000"; suffix="_long"; inpaint=1 ;;
  *) echo "VARIANT is demo or long, got '$VARIANT'" >&2; exit 2 ;;
esac
DRY_RUN="${DRY_RUN:-0}"
case "$DRY_RUN" in
  0) data_size=""; vae_steps=""; train_steps="" ;;
  1) data_size="--clips-per-combination 1 --style-clips-per-combination 1"; vae_steps="--max_train_steps 20"
     train_steps="--max_train_steps 20"; t2v_steps=""; suffix="${suffix}_dry_run" ;;
  *) echo "DRY_RUN is 0 or 1, got '$DRY_RUN'" >&2; exit 2 ;;
esac
SEED="${SEED:-42}"
OUT="${OUT:-output_dir/shapes$suffix}"
DATA="${DATA:-datasets/shapes$suffix}"
MODELS="${MODELS:-$OUT/models}"
PYTHON="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
same_folder() { [ -d "$1" ] && [ -d "$2" ] && [ "$(cd "$1" && pwd -P)" = "$(cd "$2" && pwd -P)" ]; }
if [ "$DRY_RUN" = 1 ] && same_folder "$MODELS" models; then
  echo "a dry run does not release into models/ (the shipped demo models): leave MODELS unset" >&2; exit 2
fi
# The training yamls name output_dir/shapes and datasets/shapes; the flags below point them at OUT and DATA.
# Every run of the recipe starts over (the data and the VAE were just rebuilt): the stages overwrite their folders.
paths="--pretrained_model_name_or_path $OUT/base --train_data_dir $DATA --seed $SEED --overwrite_output_dir"
release="--base $OUT/base --transformer $OUT/t2i/pixart_transformer.safetensors \
--motion_module $OUT/t2v/motion_module.safetensors --lora $OUT/lora/lora.safetensors --variant $VARIANT --world $world"
if [ "$inpaint" = 1 ]; then
  release="$release --inpaint_transformer $OUT/inpaint/pixart_transformer.safetensors \
--inpaint_motion_module $OUT/inpaint/motion_module.safetensors"
fi
stage() { echo "== $1 ($(date +%T))"; }

stage data
"$PYTHON" -m examples.shapes.make_dataset --world "$world" --output-dir "$DATA" --seed "$SEED" $data_size
stage vae
"$PYTHON" -m examples.shapes.vae --train_data_meta "$DATA/train.json" "$DATA/style.json" \
  --output_dir "$OUT/vae" --seed "$SEED" $vae_steps
stage base
"$PYTHON" -m examples.shapes.build init --vae "$OUT/vae" --output "$OUT/base" --seed "$SEED"
stage t2i
"$PYTHON" train.py --train_config $configs/t2i.yaml $paths --train_data_meta "$DATA/train.json" \
  --output_dir "$OUT/t2i" $train_steps "$@"
stage t2v
"$PYTHON" train.py --train_config $configs/t2v.yaml $paths --train_data_meta "$DATA/train.json" \
  --transformer_path "$OUT/t2i/pixart_transformer.safetensors" --output_dir "$OUT/t2v" $train_steps $t2v_steps "$@"
stage lora
"$PYTHON" train_lora.py --train_config $configs/lora.yaml $paths --train_data_meta "$DATA/style.json" \
  --transformer_path "$OUT/t2i/pixart_transformer.safetensors" \
  --motion_module_path "$OUT/t2v/motion_module.safetensors" --output_dir "$OUT/lora" $train_steps "$@"
if [ "$inpaint" = 1 ]; then
  stage inpaint
  "$PYTHON" train.py --train_config $configs/inpaint.yaml $paths --train_data_meta "$DATA/train.json" \
    --transformer_path "$OUT/t2i/pixart_transformer.safetensors" \
    --motion_module_path "$OUT/t2v/motion_module.safetensors" --output_dir "$OUT/inpaint" $train_steps "$@"
fi
stage release
"$PYTHON" -m examples.shapes.build release $release --models_dir "$MODELS"
stage done
if [ "$VARIANT" = long ]; then
  echo "evaluate with: $PYTHON -m examples.shapes.evaluate --models-dir $MODELS" \
    "--model $MODELS/Diffusion_Transformer/EasyAnimate-Shapes-Long --modes video long"
else
  echo "evaluate with: $PYTHON -m examples.shapes.evaluate --models-dir $MODELS" \
    "--modes video no_motion_module lora i2v first_last extension windows"
fi
if [ "$DRY_RUN" = 1 ]; then
  echo "a dry run: its model is not trained, nothing to ship"
elif ! same_folder "$MODELS" models; then
  echo "ship it as the $VARIANT model in models/ (replaces the files there):"
  echo "  $PYTHON -m examples.shapes.build release $release --models_dir models"
fi
