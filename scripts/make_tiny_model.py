"""Write a tiny EasyAnimate model (random weights, released file layout) for tests and quick runs.

    python scripts/make_tiny_model.py                      # into models/
    python scripts/make_tiny_model.py --models-dir /tmp/m --name my-tiny

Writes ``Diffusion_Transformer/<name>/`` (PixArt diffusers folder + its yaml and defaults),
``Motion_Module/<name>_mm.safetensors`` and ``Personalized_Model/<name>_lora.safetensors``.
"""

import argparse

from easyanimate.tiny import write_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default="models", help="root folder of the model layout")
    parser.add_argument("--name", default="tiny-easyanimate", help="model name")
    parser.add_argument("--seed", type=int, default=0, help="weights depend only on this seed")
    args = parser.parse_args()
    for label, path in write_tiny_model(args.models_dir, args.name, args.seed).items():
        print(f"{label}: {path}")


if __name__ == "__main__":
    main()
