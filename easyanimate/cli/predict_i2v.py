"""Image-to-video, video inpainting and video extension with an inpaint model: ``easyanimate-predict-i2v`` or
``python predict_i2v.py`` in a checkout.

The video keeps what it is given and the model generates the rest, following the prompt:

* ``--image``: the first frame (``--end-image``: also the last);
* ``--video`` with ``--mask`` (white where it is regenerated) or ``--box``: inpainting, frame count from the video;
* ``--video`` with ``--extend K``: its last K frames start ``--frames`` new ones; the whole video is written.

Images and videos of another size are resized and centre-cropped to the generation size (a message says so).
v1 released no inpaint weights: without ``--model`` the shipped shapes inpaint demo model is used, with its own
defaults. Every other flag is predict_t2v.py's; videos and their JSON sidecars are written the same way.

Examples::

    python predict_i2v.py --image first.png --prompt "a red circle moving left"
    python predict_i2v.py --image first.png --end-image last.png --prompt "a red circle moving left"
    python predict_i2v.py --video clip.mp4 --box 16 16 48 48 --prompt "a blue square moving up"
    python predict_i2v.py --video clip.mp4 --extend 4 --frames 16 --prompt "a blue square moving up"
    python predict_i2v.py --image first.png --frames 64 --context-frames 16 --context-overlap 4 --long-video extension
"""

from __future__ import annotations

import sys

from .predict import main as predict_main


def main(argv: list[str] | None = None) -> int:
    return predict_main(argv, inpaint=True, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
