"""A run's per-epoch record: ``metrics.csv``, kept consistent with the checkpoint across kills and resumes.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / 'metrics.csv'
    >>> keep_metric_rows(path, completed_epochs=0)
    >>> append_metric_row(path, EpochResult(1, 0.9, 0.8, 0.5, 1e-3, 12.0, 30.0))
    >>> path.read_text().splitlines()[1]
    '1,0.9,0.8,0.5,0.001,12.0,30.0'
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from heartseg.files import atomic_write_text

METRIC_COLUMNS = ('epoch', 'train_loss', 'val_loss', 'val_dice', 'lr', 'epoch_seconds', 'elapsed_seconds')


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_dice: float
    lr: float
    epoch_seconds: float
    elapsed_seconds: float


def keep_metric_rows(path: Path, completed_epochs: int) -> None:
    """Drop rows of epochs after the checkpoint, so a resumed run has no duplicates."""
    if not path.is_file():
        atomic_write_text(path, ','.join(METRIC_COLUMNS) + '\n')
        return
    with open(path, newline='') as handle:
        # A kill during an append can leave a partial last row; only complete rows are kept.
        rows = [row for row in csv.DictReader(handle) if _complete(row) and int(row['epoch']) <= completed_epochs]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _complete(row: dict[str, str | None]) -> bool:
    return None not in row and all(row.get(column) for column in METRIC_COLUMNS) and row['epoch'].isdigit()


def append_metric_row(path: Path, result: EpochResult) -> None:
    with open(path, 'a', newline='') as handle:
        csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, lineterminator='\n').writerow(vars(result))
