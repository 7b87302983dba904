"""Generate videos from text: ``python predict_t2v.py --help`` (the installed command is ``easyanimate-predict``)."""

import sys

from easyanimate.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
