"""Train EasyAnimate: the motion module on videos, the image model on images, or both mixed.

What trains is configuration (``--trainable_modules``, the model yaml in ``--config_path``); see
``easyanimate/training/config.py`` for every option. Launch on one or many GPUs with
``accelerate launch train.py ...`` (scripts/train_t2v.sh, scripts/train_t2i.sh).
"""

import logging
import sys

from easyanimate.training.config import parse_config
from easyanimate.training.trainer import train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = parse_config(argv, __doc__)
    result = train(config)
    for name, path in result.exports.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
