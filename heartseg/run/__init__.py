"""Stage 6, a planned run carried out: one training run, or a K-fold cross-validation fold by fold, scored.

Takes the plan and the dataset from ``main.py``; splits and preprocesses the cases, writes ``config.json``
and ``splits.json``, trains with ``training.py`` (``runner``), and for a cross-validation predicts each
fold's validation cases, chooses the post-processing on them and pools the scores (``crossval``).
"""
