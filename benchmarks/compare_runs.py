"""Accuracy of several prediction folders on the same cases, side by side, with paired differences.

Each folder is a ``predict.py --labels`` output (its ``metrics.csv``). For
every structure, and for the mean over structures of each case, the table
gives mean Dice and HD95 with their counts, and each folder's paired
difference from the first (the reference): mean ± standard error over the
cases both scored. A case whose HD95 is undefined (an empty mask) is left out
of that structure's HD95 mean and counted.

Example:
    python -m benchmarks.compare_runs runs/base/test runs/fix/test --names base fix
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

from heartseg.cli import Parser, user_path
from heartseg.errors import UserError, run_cli

METRICS = (('dice', 'Dice', '{:.4f}'), ('hd95_mm', 'HD95 mm', '{:.2f}'))
MEAN = 'mean'


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        'folders', type=user_path, nargs='+', help='prediction folders holding metrics.csv; the first is the reference'
    )
    parser.add_argument('--names', nargs='+', help='a name per folder (default: the folder names)')
    return parser


def read_scores(folder: Path) -> dict[tuple[str, str], dict[str, float]]:
    """``{(case, structure): {metric: value}}``, with each case's mean over its structures as structure ``'mean'``."""
    path = folder / 'metrics.csv'
    try:
        with open(path, newline='') as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise UserError(path, f'cannot read the scores ({error.strerror})') from None
    scores = {(row['case'], row['name']): {metric: float(row[metric]) for metric, _, _ in METRICS} for row in rows}
    for case in {case for case, _ in scores}:
        structures = [values for (c, _), values in scores.items() if c == case]
        scores[(case, MEAN)] = {metric: float(np.mean([v[metric] for v in structures])) for metric, _, _ in METRICS}
    return scores


def cell(values: list[float], form: str) -> str:
    finite = [v for v in values if math.isfinite(v)]
    mean = form.format(np.mean(finite)) if finite else 'n/a'
    return mean + (f' ({len(finite)} of {len(values)})' if len(finite) < len(values) else '')


def paired(reference: dict, other: dict, keys: list, metric: str, form: str) -> str:
    differences = [other[k][metric] - reference[k][metric] for k in keys if k in other]
    differences = [d for d in differences if math.isfinite(d)]
    if len(differences) < 2:
        return 'n/a'
    mean, error = np.mean(differences), np.std(differences, ddof=1) / math.sqrt(len(differences))
    return f'{form.format(mean)} ± {form.format(error)}' if mean < 0 else f'+{form.format(mean)} ± {form.format(error)}'


def table(names: list[str], runs: list[dict]) -> str:
    structures = sorted({s for _, s in runs[0]} - {MEAN}) + [MEAN]
    cases = sorted({c for c, _ in runs[0]})
    header = (
        ['run', 'structure', 'cases']
        + [name for _, name, _ in METRICS]
        + [f'{name} minus {names[0]}' for _, name, _ in METRICS]
    )
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    for structure in structures:
        keys = [(case, structure) for case in cases]
        for name, run in zip(names, runs):
            present = [run[k] for k in keys if k in run]
            row = [name, structure, str(len(present))]
            row += [cell([p[metric] for p in present], form) for metric, _, form in METRICS]
            row += ['' if run is runs[0] else paired(runs[0], run, keys, metric, form) for metric, _, form in METRICS]
            lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = args.names or [folder.name if folder.name != 'test' else folder.parent.name for folder in args.folders]
    if len(names) != len(args.folders):
        raise UserError('--names', f'{len(names)} names for {len(args.folders)} folders')
    print(table(names, [read_scores(folder) for folder in args.folders]))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
