"""Demos built on the ``easyanimate`` library, each with its own tests and model card.

Run their modules from the repository root, e.g. ``python -m examples.shapes.evaluate``. The library
never imports from here.
"""
