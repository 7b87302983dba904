"""The command-line programs: ``easyanimate-predict`` (``predict_t2v.py``), ``easyanimate-predict-i2v``
(``predict_i2v.py``, both in ``predict.py``), ``easyanimate-ui`` (``app.py``), ``easyanimate-train`` (``train.py``)
and ``easyanimate-train-lora`` (``train_lora.py``), both in ``train.py``.

Each module has a ``main(argv=None) -> int``; the scripts in a checkout and the installed commands call it.
"""
