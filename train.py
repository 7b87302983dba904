"""Train EasyAnimate: the motion module on videos, the image model on images, or both mixed.

What trains is configuration (``--trainable_modules``, the model yaml in ``--config_path``); see
``easyanimate/training/config.py`` for every option. Launch on one or many GPUs with
``accelerate launch train.py ...`` (scripts/train_t2v.sh, scripts/train_t2i.sh).
"""

import sys

from easyanimate.training.cli import main as train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
