"""Train a LoRA on the EasyAnimate transformer (and optionally T5), exported in the original kohya format.

The base model stays frozen (the motion module is never adapted); the result ``lora.safetensors``
loads in predict_t2v.py (--lora) and in the original EasyAnimate. Launch with
``accelerate launch train_lora.py ...`` (scripts/train_lora.sh).
"""

import sys

from easyanimate.training.cli import main as train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, __doc__, lora=True)


if __name__ == "__main__":
    sys.exit(main())
