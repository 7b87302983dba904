"""Serve the EasyAnimate web UI (Gradio): ``easyanimate-ui`` or ``python app.py`` in a checkout.

Examples::

    python app.py                                  # http://127.0.0.1:7860, models from models/
    python app.py --models-dir /data/models --port 8000
    python app.py --host 0.0.0.0                   # reachable from the network: only on a trusted one
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import gradio as gr

from ..generation import MEMORY_MODES
from ..ui import EasyAnimateController, build_ui


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    add("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
        help="weights dtype (auto: fp16 on GPU, fp32 on CPU)")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    add("--memory-mode", default="none", choices=list(MEMORY_MODES),
        help="; ".join(f"{k}: {v}" for k, v in MEMORY_MODES.items()))
    add("--models-dir", default="models", help="root of Diffusion_Transformer/, Motion_Module/, Personalized_Model/")
    add("--port", type=int, default=7860, help="port (default 7860)")
    add("--samples-dir", default="samples", help="results go to <samples-dir>/Gradio-<timestamp>/")
    add("--share", action="store_true", help="also publish a temporary public gradio.live link")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve the page until interrupted."""
    launch(argv, block=True)
    return 0


def launch(argv: list[str] | None = None, block: bool = True) -> gr.Blocks:
    """Build and launch the page; with ``block`` False return while it serves (for tests)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own startup requests
    args = parse_args(argv)
    controller = EasyAnimateController(Path(args.models_dir), Path(args.samples_dir), args.device, args.dtype,
                                       args.memory_mode)
    page = build_ui(controller)
    # show_error: a value gradio itself cannot read (text for a number) comes back as its message, not as a blank
    page.queue().launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=not block,
                        show_error=True,
                        allowed_paths=[str(controller.output_dir)])
    return page


if __name__ == "__main__":
    sys.exit(main())
