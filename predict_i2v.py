"""Image-to-video, inpainting and extension: ``python predict_i2v.py --help`` (the installed command is
``easyanimate-predict-i2v``)."""

import sys

from easyanimate.cli.predict_i2v import main

if __name__ == "__main__":
    sys.exit(main())
