"""Describing a dataset: every case's header, intensities and labels, the integrity problems, the plan, figures.

Takes a :class:`~heartseg.data.cases.DatasetSpec`; gives per-case results read in worker processes
(``cases``), the text report with the plan it implies (``report``), and the tables and figures
(``figures``) that ``analyze_data.py`` writes.
"""
