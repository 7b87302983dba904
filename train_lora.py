"""Train a LoRA on the EasyAnimate transformer (and optionally T5), exported in the original kohya format.

The base model stays frozen; the motion module gets no LoRA unless ``--lora_motion_module`` (as in v1, where
``add_lora_in_attn_temporal`` was off). The result ``lora.safetensors``
loads in predict_t2v.py (--lora) and in the original EasyAnimate. Launch with
``accelerate launch train_lora.py ...`` (scripts/train_lora.sh).
"""

import logging
import sys

from easyanimate.training.config import parse_config
from easyanimate.training.trainer import train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = parse_config(argv, __doc__, lora=True)
    result = train(config)
    for name, path in result.exports.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
