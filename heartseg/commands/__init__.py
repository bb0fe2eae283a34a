"""The commands users run, above every stage: each parses its flags and calls one function here.

Takes a command line; gives the work of ``main.py`` (``train`` with ``train_flags``), ``predict.py``
(``predict`` with ``predict_flags`` and ``predict_inputs``), ``analyze_data.py`` (``analyze``) and
``export.py`` (``export``). The scripts at the top level only call ``main`` from here through
:func:`heartseg.errors.run_cli`, as pytorch-3dunet's ``train.py`` calls its trainer.
"""
