"""heartseg: the library behind main.py, predict.py and analyze_data.py.

One concept per module; the data flows one way through them: ``data``
(dataset.json → subjects checked by ``validation``'s rules → preprocessed, cached) → ``sampling`` (patches) →
the network (``mymodel.py``) and ``losses`` → ``training.py`` → ``inference``,
``prediction``, ``metrics`` and ``crossval``.
"""
