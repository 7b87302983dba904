"""The shapes demo: a synthetic world of coloured shapes in motion, and the small models trained on it.

The models it builds ship under ``models/`` and are what ``predict_t2v.py`` and ``app.py`` fall back on
when the released weights are absent; the model card is ``examples/shapes/README.md``.

* ``world``: the world's generator and its yaml (``configs/world.yaml``, ``configs/world_long.yaml``);
* ``make_dataset``: writes the world's clips as a "normal"-format dataset;
* ``vae``: trains the toy VAE (the one trainer outside ``train.py``);
* ``build``: the untrained base model folder (``init``) and the released layout (``release``);
* ``classify``: reads colour, shape and direction back from a clip's pixels;
* ``evaluate``: generates clips with a model and scores them with ``classify``;
* ``train_shapes.sh``: the whole recipe, stage by stage.
"""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
"""The demo's yaml files: world, architecture and one per training stage."""
