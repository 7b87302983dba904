"""Train EasyAnimate: ``easyanimate-train`` (``train.py`` in a checkout) and ``easyanimate-train-lora``.

``easyanimate-train`` trains the motion module on videos, the image model on images, or both mixed: what
trains is configuration (``--trainable_modules``, the model yaml in ``--config_path``, a ``--train_config``
yaml); ``easyanimate-train-lora`` trains a LoRA, exported in the original kohya format and as a peft adapter.
Launch on one or many GPUs with ``accelerate launch``; ``scripts/train_t2v.sh``, ``train_t2i.sh`` and
``train_lora.sh`` are the production recipes (``config/train/*.yaml``).

Flags in, exports out, one line for every user error.

A setting out of range, a file that cannot be used, an output folder another run owns, a full disk: one
``error: ...`` line on stderr and exit status 2, with no traceback unless ``--debug`` is given (or
``EASYANIMATE_DEBUG=1`` is set). Ctrl-C exits with 130 after the trainer has said what it saved. Under
``accelerate launch`` only the first process prints the line.
"""

from __future__ import annotations

import logging
import os
import sys

from ..training.config import parse_config
from ..training.trainer import train

USER_ERRORS = (ValueError, OSError, ImportError)
"""What a user can fix: settings and files (ConfigError, WeightLoadError, data errors), the disk, a missing package."""


TRAIN_HELP = """Train EasyAnimate: the motion module on videos, the image model on images, or both mixed.

What trains is configuration (--trainable_modules, the model yaml in --config_path, a --train_config yaml).
Launch on one or many GPUs with `accelerate launch train.py ...` (scripts/train_t2v.sh, scripts/train_t2i.sh)."""

LORA_HELP = """Train a LoRA on the EasyAnimate transformer (and optionally T5), exported in the original kohya format.

The base model stays frozen; the motion module gets no LoRA unless --lora_motion_module (as in v1, where
add_lora_in_attn_temporal was off). The result lora.safetensors loads in predict_t2v.py (--lora) and in the
original EasyAnimate. Launch with `accelerate launch train_lora.py ...` (scripts/train_lora.sh)."""


def main(argv: list[str] | None = None) -> int:
    """``easyanimate-train``: full, image or motion-module training."""
    return run(argv, TRAIN_HELP)


def main_lora(argv: list[str] | None = None) -> int:
    """``easyanimate-train-lora``: LoRA training."""
    return run(argv, LORA_HELP, lora=True)


def run(argv: list[str] | None, description: str, lora: bool = False) -> int:
    """Parse, train, print the exports; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("EASYANIMATE_DEBUG", "0") not in ("", "0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        result = train(parse_config(argv, description, lora=lora))
    except USER_ERRORS as error:
        if debug:
            raise
        _say(f"error: {error}")
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        _say("interrupted")
        return 130
    for name, path in result.exports.items():
        print(f"{name}: {path}")
    return 0


def _say(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
