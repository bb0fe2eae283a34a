"""heartseg: the library behind main.py, predict.py and analyze_data.py.

One concept per module; the data flows one way through them: ``data``
(dataset.json → validated, preprocessed subjects) → ``sampling`` (patches) →
the network (``mymodel.py``) and ``losses`` → ``training.py`` → ``inference``,
``prediction``, ``metrics`` and ``crossval``.
"""
