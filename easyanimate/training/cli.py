"""The command line of ``train.py`` and ``train_lora.py``: flags in, exports out, one line for every user error.

A setting out of range, a file that cannot be used, an output folder another run owns, a full disk: one
``error: ...`` line on stderr and exit status 2, with no traceback unless ``--debug`` is given (or
``EASYANIMATE_DEBUG=1`` is set). Ctrl-C exits with 130 after the trainer has said what it saved. Under
``accelerate launch`` only the first process prints the line.
"""

from __future__ import annotations

import logging
import os
import sys

from .config import parse_config
from .trainer import train

USER_ERRORS = (ValueError, OSError, ImportError)
"""What a user can fix: settings and files (ConfigError, WeightLoadError, data errors), the disk, a missing package."""


def main(argv: list[str] | None, description: str, lora: bool = False) -> int:
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
