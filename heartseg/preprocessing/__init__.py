"""Stage 2, cases to network input: canonical orientation, the target spacing, a z-score per channel.

Takes :mod:`heartseg.data` cases and a :class:`~heartseg.preprocessing.preprocessing.Preprocessing`; gives
TorchIO subjects, each computed once and cached under a key made from the files' content (``cache``).
Labels are resampled as one mask per value, so they stay aligned with their images.
"""
