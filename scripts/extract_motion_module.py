"""Write the motion module of a full video-transformer checkpoint with the original key names.

    python scripts/extract_motion_module.py output_dir/transformer/diffusion_pytorch_model.safetensors \
        models/Motion_Module/my_mm.safetensors

Only keys of the blocks' ``attn_temporal`` modules are written (the released file's 784 keys for the
v1 config, position tables included unless ``--no-position-tables``).
"""

import argparse
from pathlib import Path

from easyanimate.models import read_state_dict, save_motion_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path,
                        help="full transformer weights (.safetensors, or a pickle read with weights_only)")
    parser.add_argument("output", type=Path, help="motion-module file to write (.safetensors)")
    parser.add_argument("--no-position-tables", action="store_true",
                        help="leave out the computed pos_encoder.pe buffers")
    args = parser.parse_args()
    if args.output.exists():
        parser.error(f"{args.output} exists; choose another name (nothing is overwritten)")
    count = save_motion_module(read_state_dict(args.checkpoint), args.output,
                               include_position_tables=not args.no_position_tables)
    print(f"wrote {count} motion-module tensors to {args.output}")


if __name__ == "__main__":
    main()
