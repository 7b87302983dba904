"""Write the motion module of a full video-transformer checkpoint with the original key names.

    python scripts/extract_motion_module.py output_dir/checkpoint-500 models/Motion_Module/my_mm.safetensors
    python scripts/extract_motion_module.py output_dir/transformer/diffusion_pytorch_model.safetensors my_mm.safetensors

CHECKPOINT is a weight file, a folder saved by ``save_pretrained`` (``transformer/`` of a run), or a training
checkpoint folder (``checkpoint-<step>/``). Only keys of the blocks' ``attn_temporal`` modules are written (the
released file's 784 keys for the v1 config, position tables included unless ``--no-position-tables``); when
the folder has its ``config.json``, what the motion module was built with goes into the file's metadata.
"""

import argparse
import json
import sys
from pathlib import Path

from easyanimate.models import WeightLoadError, read_state_dict, save_motion_module
from easyanimate.models.loading import WEIGHT_FILES, MotionModuleSpec


def weights_of(checkpoint: Path) -> tuple[Path, MotionModuleSpec | None]:
    """The weight file of ``checkpoint`` (a file or a folder) and the spec its ``config.json`` gives, if any."""
    if checkpoint.is_file():
        config = checkpoint.parent / "config.json"
        return checkpoint, spec_of(config) if config.is_file() else None
    for folder in (checkpoint, checkpoint / "transformer"):
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                config = folder / "config.json"
                return folder / name, spec_of(config) if config.is_file() else None
    if checkpoint.is_dir():
        raise WeightLoadError(f"{checkpoint} is a folder without transformer weights: expected "
                              f"{' or '.join(WEIGHT_FILES)} in it or in its transformer/ folder")
    raise WeightLoadError(f"checkpoint not found: {checkpoint}")


def spec_of(config_path: Path) -> MotionModuleSpec | None:
    config = json.loads(config_path.read_text())
    if config.get("basic_block_type", "motionmodule") != "motionmodule" or not config.get("motion_module_kwargs"):
        return None
    width = config["num_attention_heads"] * config["attention_head_dim"]
    return MotionModuleSpec.of_settings(config.get("motion_module_type", "VanillaGrid"),
                                        config["motion_module_kwargs"], width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path,
                        help="a weight file (.safetensors, or a pickle read with weights_only) or a checkpoint folder")
    parser.add_argument("output", type=Path, help="motion-module file to write (.safetensors)")
    parser.add_argument("--no-position-tables", action="store_true",
                        help="leave out the computed pos_encoder.pe buffers")
    args = parser.parse_args(argv)
    if args.output.exists():
        parser.error(f"{args.output} exists; choose another name (nothing is overwritten)")
    try:
        weights, spec = weights_of(args.checkpoint)
        count = save_motion_module(read_state_dict(weights), args.output,
                                   include_position_tables=not args.no_position_tables, spec=spec)
    except (WeightLoadError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {count} motion-module tensors from {weights} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
