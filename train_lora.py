"""Train a LoRA: ``python train_lora.py --help`` (the installed command is ``easyanimate-train-lora``)."""

import sys

from easyanimate.cli.train import main_lora

if __name__ == "__main__":
    sys.exit(main_lora())
