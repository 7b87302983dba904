"""The Gradio app behind ``app.py``: :class:`EasyAnimateController` (state) and :func:`build_ui` (page)."""

from .controller import EasyAnimateController, GenerationResult, ModelChoices, UIError, WeightChoice, scan_models
from .page import build_ui

__all__ = ["EasyAnimateController", "GenerationResult", "ModelChoices", "UIError", "WeightChoice", "build_ui",
           "scan_models"]
