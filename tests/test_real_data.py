"""Learning on real scans: a short coarse run on a few LA2018 cases.

Measured here (2-core CPU): this recipe reaches a best validation Dice of
about 0.84 in about 60 s (preprocessing included). The floor of 0.75 leaves room for platform
differences while still catching a broken pipeline: a geometry or label bug
lands far below 0.5.
"""

from __future__ import annotations

import csv

from heartseg.errors import run_cli
from main import main

DICE_FLOOR = 0.75


def test_short_real_run_learns(la2018, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    argv = [
        '--data',
        str(la2018),
        '--run-dir',
        str(run_dir),
        '--max-cases',
        '16',
        '--spacing',
        '2.0',
        '--levels',
        '3',
        '--base-channels',
        '16',
        '--epochs',
        '10',
        '--steps-per-epoch',
        '20',
    ]
    assert run_cli(main, argv) == 0
    with open(run_dir / 'metrics.csv', newline='') as handle:
        dices = [float(row['val_dice']) for row in csv.DictReader(handle)]
    assert max(dices) >= DICE_FLOOR, f'best validation Dice {max(dices):.3f} is below {DICE_FLOOR}: {dices}'
