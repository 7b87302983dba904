"""Write the shapes dataset: mp4 clips plus "normal"-format json metadata (train.json, style.json).

    python -m examples.shapes.make_dataset                       # datasets/shapes from configs/world.yaml
    python -m examples.shapes.make_dataset --output-dir /tmp/shapes --clips-per-combination 2

The world (palette, sizes, speeds, held-out combinations, seed) is ``examples/shapes/configs/world.yaml``
unless ``--world`` names another; the same seed always writes the same frames. See
:mod:`examples.shapes.world`.
"""

import argparse
import dataclasses
from pathlib import Path

from .world import WORLDS, load_world, write_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips-per-combination", type=int, help="training clips per seen combination (override)")
    parser.add_argument("--output-dir", default="datasets/shapes", help="where videos/ and the json files go")
    parser.add_argument("--seed", type=int, help="dataset seed (override)")
    parser.add_argument("--style-clips-per-combination", type=int,
                        help="dark-background clips per combination (override)")
    parser.add_argument("--world", default=str(WORLDS["demo"]), help="world yaml (default: the demo model's)")
    args = parser.parse_args(argv)
    overrides = {"clips_per_combination": args.clips_per_combination, "seed": args.seed,
                 "style_clips_per_combination": args.style_clips_per_combination}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    world = dataclasses.replace(load_world(args.world), **overrides)
    files = write_dataset(world, Path(args.output_dir))
    print(f"wrote {files.counts['train']} training clips to {files.train} and {files.counts['style']} style clips "
          f"to {files.style} ({len(world.held_out)} combinations held out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
