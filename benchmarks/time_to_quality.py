"""How long to train: test Dice and HD95 against the wall-clock budget, one full schedule per budget.

For each budget in ``--minutes`` it trains ``main.py --time-limit MINUTES
--val-fraction 0`` (so the learning rate anneals within that budget, and no
case picks a checkpoint), predicts the ``--test`` scans with ``predict.py``'s
defaults and scores them against their labels. It writes
``OUTPUT/time_to_quality.csv`` (one row per budget: optimiser steps, steps per
second, Dice and HD95 per structure and their mean over the cases) and
``time_to_quality.png``. A budget already scored in ``OUTPUT`` is read, not
trained again, so a stopped run continues where it was.

``--test`` is a ``benchmarks.holdout`` output's ``test`` folder (``images/``
and ``labels/``), and ``--data`` the training folder it left: the scored
patients chose nothing. Run it alone on the machine: its budgets are wall time.

Example:
    python -m benchmarks.time_to_quality --data ACDC/train --test ACDC/test --minutes 5 10 20 30 \\
        --output runs/time_to_quality_acdc
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.compare_runs import MEAN, read_scores
from heartseg.cli import Parser, number, user_path
from heartseg.errors import UserError, run_cli
from heartseg.files import atomic_savefig, write_rows_csv

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--data', type=user_path, required=True, help='the training dataset folder')
    parser.add_argument(
        '--test', type=user_path, required=True, help='folder of held-out images/ and labels/ (benchmarks.holdout)'
    )
    parser.add_argument(
        '--minutes', type=number(0.01), nargs='+', required=True, help='wall-clock budgets, one training each'
    )
    parser.add_argument('--output', type=user_path, required=True, help='folder for the runs, the CSV and the PNG')
    parser.add_argument('main_flags', nargs='*', help='main.py flags (after --), the same for every budget')
    return parser


def budget_folder(output: Path, minutes: float) -> Path:
    return output / f'{minutes:g}min'


def train_and_score(args: argparse.Namespace, minutes: float) -> Path:
    """Train and score one budget, unless a stopped run already scored it; the run folder."""
    run = budget_folder(args.output, minutes)
    if (run / 'test' / 'metrics.csv').is_file():
        return run
    if not (run / 'best.pt').is_file():
        train = ['main.py', '--data', str(args.data), '--val-fraction', '0', '--time-limit', f'{minutes:g}']
        command(train + ['--run-dir', str(run), *args.main_flags])
    predict = ['predict.py', '--checkpoint', str(run), '--input', str(args.test / 'images')]
    command(predict + ['--labels', str(args.test / 'labels'), '--output', str(run / 'test'), '--overwrite'])
    return run


def command(argv: list[str]) -> None:
    """Run a project script; its own one-line error ends this benchmark."""
    completed = subprocess.run([sys.executable, *argv], cwd=REPO, stderr=subprocess.PIPE, text=True)
    if completed.returncode:
        last = completed.stderr.strip().splitlines()[-1:] or ['no message']
        raise UserError(argv[0], f'exited with {completed.returncode}: {last[0]}')


def budget_row(run: Path, minutes: float) -> dict:
    """The budget's steps, speed and scores: mean Dice and HD95 per structure over the held-out cases."""
    config = json.loads((run / 'config.json').read_text())['config']
    training_cases = len(json.loads((run / 'splits.json').read_text())['training'])
    epochs = len((run / 'metrics.csv').read_text().strip().splitlines()) - 1
    steps = epochs * (config['steps_per_epoch'] or -(-training_cases // config['batch_size']))
    trained_seconds = float((run / 'metrics.csv').read_text().strip().splitlines()[-1].split(',')[-1])
    scores = read_scores(run / 'test')
    row = {'minutes': minutes, 'steps': steps, 'steps_per_second': round(steps / trained_seconds, 3)}
    structures = sorted({structure for _, structure in scores} - {MEAN}) + [MEAN]
    for structure in structures:
        values = [metrics for (_, name), metrics in scores.items() if name == structure]
        row[f'{structure}_dice'] = round(float(np.mean([v['dice'] for v in values])), 4)
        hd95 = [v['hd95_mm'] for v in values if np.isfinite(v['hd95_mm'])]
        row[f'{structure}_hd95_mm'] = round(float(np.mean(hd95)), 2) if hd95 else float('nan')
    row['cases'] = len({case for case, _ in scores})
    return row


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    minutes = [row['minutes'] for row in rows]
    for key in [key for key in rows[0] if key.endswith('_dice')]:
        structure = key.removesuffix('_dice')
        axis.plot(minutes, [row[key] for row in rows], 'o-', lw=2.5 if structure == MEAN else 1, label=structure)
    axis.set_xlabel('training budget, minutes (--time-limit)')
    axis.set_ylabel(f'test Dice ({rows[0]["cases"]} held-out cases)')
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    atomic_savefig(figure, path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for folder in (args.test / 'images', args.test / 'labels'):
        if not folder.is_dir():
            raise UserError(folder, 'not a folder; --test takes a benchmarks.holdout test folder (images/, labels/)')
    rows = [budget_row(train_and_score(args, minutes), minutes) for minutes in sorted(set(args.minutes))]
    write_rows_csv(args.output / 'time_to_quality.csv', rows)
    draw(rows, args.output / 'time_to_quality.png')
    for row in rows:
        print(
            f'{row["minutes"]:g} min: {row["steps"]} steps, mean Dice {row["mean_dice"]:.4f} over {row["cases"]} cases'
        )
    print(f'Table: {args.output / "time_to_quality.csv"}; curve: {args.output / "time_to_quality.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
