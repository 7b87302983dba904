"""Train EasyAnimate: ``python train.py --help`` (the installed command is ``easyanimate-train``)."""

import sys

from easyanimate.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
