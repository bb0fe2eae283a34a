"""heartseg: the library behind main.py, predict.py, analyze_data.py and export.py.

One subpackage per stage, in the order the data flows and imports go: ``data`` (dataset.json → checked
cases) → ``preprocessing`` (orientation, spacing, z-score; cached) → ``planning`` (the RunConfig) →
``quality`` (QC measures) → ``inference`` (sliding window, prediction, post-processing, export) →
``training`` (augmentation, patches, losses, schedule, recipe; the loop is ``training.py``) → ``run``
(a run or a cross-validation) → ``analysis`` (dataset reports) → ``commands`` (what the scripts call).
The modules directly in ``heartseg/`` are shared leaves that import no stage.
docs/explanation/modules.md draws the stages.
"""
