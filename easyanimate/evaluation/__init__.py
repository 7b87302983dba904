"""Measuring what a trained model generates (the shapes world: easyanimate.evaluation.shapes)."""
