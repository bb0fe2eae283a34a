"""Stage 5, the pieces of the training recipe that ``training.py``'s epoch loop runs.

Takes a planned :class:`~heartseg.planning.config.RunConfig` and preprocessed subjects; gives the patch
sampler with foreground oversampling (``sampling``), nnU-Net's augmentation (``augmentation``), the losses
with deep supervision (``losses``), the learning-rate schedule and time budget (``schedule``), the whole
recipe assembled from the config (``recipe``), and the run's metrics rows (``run_log``).
"""
