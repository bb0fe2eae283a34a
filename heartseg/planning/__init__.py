"""Stage 3, the plan: the dataset's headers, the device and the user's overrides made into one :class:`RunConfig`.

Takes a :class:`~heartseg.data.cases.DatasetSpec` and the command line's settings; gives the typed run
configuration (``config``) with its target spacing, patch, per-axis pooling, output kind and length
(``plan``), a resumed run's config (``resume``) and the ``Plan:`` line (``describe``). It owns the defaults
that depend on the device, and the vocabulary of settings (loss names, the sliding window's overlap).
"""
