"""The cardiac-function pictures: a cine series' LV and RV volume curves, and Bland–Altman plots against the experts.

A Bland–Altman plot puts each patient at the mean of the two measurements (x) and their difference,
prediction minus reference (y), with the bias (the mean difference) and the 95 % limits of agreement
(bias ± 1.96 SD of the differences) as horizontal lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from heartseg.files import atomic_savefig

# The indices a Bland–Altman panel is drawn for, with their units.
BLAND_ALTMAN_INDICES = {'LVEF_pct': 'LV EF (%)', 'RVEF_pct': 'RV EF (%)', 'LVM_g': 'LV mass (g)'}


def write_volume_curve(path: Path, patient: str, phases: Mapping[str, Mapping[str, float]], ed: str, es: str) -> None:
    """The LV and RV cavity volumes over the phases, ED and ES marked."""
    names = list(phases)
    figure = Figure(figsize=(6, 3.5))
    axes = figure.add_subplot()
    for structure, colour in (('LV', 'tab:red'), ('RV', 'tab:blue')):
        if all(structure in phases[name] for name in names):
            axes.plot(
                range(len(names)), [phases[name][structure] for name in names], 'o-', color=colour, label=structure
            )
    for phase, style in ((ed, '--'), (es, ':')):
        axes.axvline(names.index(phase), color='grey', linestyle=style)
    axes.set(xlabel='phase (ED dashed, ES dotted)', ylabel='volume (ml)', title=f'{patient}: cavity volumes')
    axes.legend()
    figure.tight_layout()
    atomic_savefig(figure, path)


def write_bland_altman(path: Path, predicted: Sequence[dict], reference: Sequence[dict]) -> None:
    """One panel per index of :data:`BLAND_ALTMAN_INDICES` that both tables give for some patient."""
    by_patient = {row['patient']: row for row in reference}
    figure = Figure(figsize=(4 * len(BLAND_ALTMAN_INDICES), 3.5))
    for panel, (index, title) in enumerate(BLAND_ALTMAN_INDICES.items(), start=1):
        axes = figure.add_subplot(1, len(BLAND_ALTMAN_INDICES), panel)
        pairs = np.array(
            [
                (float(row[index]), float(by_patient[row['patient']][index]))
                for row in predicted
                if row['patient'] in by_patient and row[index] != '' and by_patient[row['patient']][index] != ''
            ]
        ).reshape(-1, 2)
        axes.set(title=f'{title}, n={len(pairs)}', xlabel='mean of the two', ylabel='prediction - reference')
        if len(pairs):
            difference = pairs[:, 0] - pairs[:, 1]
            axes.scatter(pairs.mean(axis=1), difference, s=12)
            bias, sd = difference.mean(), difference.std(ddof=1) if len(pairs) > 1 else 0.0
            for level, style in ((bias, '-'), (bias - 1.96 * sd, '--'), (bias + 1.96 * sd, '--')):
                axes.axhline(level, color='grey', linestyle=style)
    figure.tight_layout()
    atomic_savefig(figure, path)
