"""A prediction folder's per-case records, and the tables, summary and review page made from them.

``predict.py`` writes ``case_records/<case>.json`` after each case's files: its
status (``ok`` or ``failed``, with the error), what produced it (the model
files' SHA-256, the settings that change a mask, the input file's path, size
and time), its metrics against the reference and its QC row. A case whose
record and files are complete, and made the way this run would make it, is
done: a killed run started again skips it, a run with another checkpoint,
other settings or a changed scan predicts it again, and torchrun processes,
each predicting its share of the list process 0 made, need to share nothing
but the folder. At the end, process 0 turns
every case's record into ``metrics.csv``, ``qc.csv``, ``summary.json`` and
``review.html``.

Example:
    >>> import tempfile
    >>> folder = PredictionFolder(Path(tempfile.mkdtemp()))
    >>> folder.write_record({'case': 'a', 'status': 'failed', 'error': 'a.nii.gz: truncated', 'mask_written': False})
    >>> folder.read_record('a')['status']
    'failed'
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from heartseg.files import atomic_write_text, write_rows_csv
from heartseg.inference.prediction import write_evaluation
from heartseg.quality.review import write_review_page

RECORDS = 'case_records'
NOT_YET = 'not predicted yet'
THUMBNAILS = 'review'
FLAGGED_LISTED = 10  # the printed line names this many flagged cases, then counts the rest


class PredictionFolder:
    """The files of one ``--output`` folder, named in one place."""

    def __init__(self, root: Path):
        self.root = root

    def mask(self, case_id: str) -> Path:
        return self.root / f'{case_id}.nii.gz'

    def probabilities(self, case_id: str) -> Path:
        return self.root / f'{case_id}_probabilities.nii.gz'

    def uncertainty(self, case_id: str) -> Path:
        return self.root / f'{case_id}_uncertainty.nii.gz'

    def overview(self, case_id: str) -> Path:
        return self.root / f'{case_id}.png'

    def thumbnail(self, case_id: str) -> Path:
        return self.root / THUMBNAILS / f'{case_id}.png'

    def record(self, case_id: str) -> Path:
        return self.root / RECORDS / f'{case_id}.json'

    def write_record(self, record: dict) -> None:
        atomic_write_text(self.record(record['case']), json.dumps(_plain(record)))

    def read_record(self, case_id: str) -> dict | None:
        """The case's record, or None if it has none (or an unreadable one: the case is then redone)."""
        try:
            return json.loads(self.record(case_id).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None

    def forget(self, case_id: str) -> None:
        """Drop the case's record before its files are made again, so that a run killed halfway leaves none to trust."""
        self.record(case_id).unlink(missing_ok=True)

    def missing(self, case_id: str, wanted: list[Path], metrics: bool, qc: bool, produced_by: dict) -> str | None:
        """Why this case must be predicted (:data:`NOT_YET`,
        or why an earlier result will not do), or None if it is done.

        Done means an ``ok`` record made by the same models and mask settings from
        the same input file, with what this run asks for, and every file.
        """
        record = self.read_record(case_id)
        if record is None:
            return NOT_YET
        if record.get('status') != 'ok':
            return 'failed before'
        earlier = record.get('produced_by')
        if earlier is None:
            return 'predicted by an older version that kept no record of its model'
        for key, reason in (
            ('models', 'predicted with another checkpoint'),
            ('settings', 'predicted with other settings'),
            ('input', 'predicted from another input file'),
        ):
            if earlier.get(key) != produced_by[key]:
                return reason
        if (
            (metrics and 'metrics' not in record)
            or (qc and 'qc' not in record)
            or not all(path.is_file() for path in wanted)
        ):
            return 'predicted without some of the files asked for now'
        return None

    def finish(
        self, case_ids: list[str], metrics: bool, qc: bool, page_fields: dict[str, dict] | None = None
    ) -> list[str]:
        """Write the folder's tables, summary and page from every case's record; return the lines to print.

        Args:
            page_fields: More columns of the review page, by case (its patient's cardiac function).
        """
        records = [self.read_record(case_id) or _missing(case_id) for case_id in case_ids]
        lines = []
        metric_rows = [
            {**_undefined_as_nan(row), **({'predicted_dice': r['qc']['predicted_dice']} if 'qc' in r else {})}
            for r in records
            for row in r.get('metrics', [])
        ]
        qc_rows = [qc_row(record, metrics) for record in records] if qc else []
        extra = {'qc': qc_summary(qc_rows)} if qc else {}
        if metrics and metric_rows:
            lines.append(write_evaluation(metric_rows, self.root, extra))
        elif qc:
            atomic_write_text(self.root / 'summary.json', json.dumps(extra, indent=2))
        if qc and qc_rows:
            write_rows_csv(self.root / 'qc.csv', qc_rows)
            page = write_review_page(
                [
                    {**row, **_page_fields(record), **(page_fields or {}).get(row['case'], {})}
                    for row, record in zip(qc_rows, records)
                ],
                self.root,
            )
            lines.append(flagged_line(qc_rows, page))
        return lines


def qc_row(record: dict, metrics: bool) -> dict:
    """The case's qc.csv row; a failed case is flagged, with its error as the reason."""
    if record['status'] != 'ok':
        return {
            'case': record['case'],
            'predicted_dice': '',
            'flag': 1,
            'reasons': f'prediction failed: {record["error"]}',
        }
    row = dict(record['qc'])
    if metrics and record.get('metrics'):
        dices = {m['name']: m['dice'] for m in record['metrics']}
        true = {'true_dice': round(sum(dices.values()) / len(dices), 4)}
        if len(dices) > 1:
            true.update({f'{name} true_dice': round(dice, 4) for name, dice in dices.items()})
        row = {key: row[key] for key in ('case', 'predicted_dice')} | true | row
    return row


def qc_summary(rows: list[dict]) -> dict:
    flagged = [row['case'] for row in rows if int(row['flag'])]
    failed = [row['case'] for row in rows if row['predicted_dice'] == '']
    return {'cases': len(rows), 'flagged': len(flagged), 'flagged_cases': flagged, 'failed_cases': failed}


def flagged_line(rows: list[dict], page: Path) -> str:
    """e.g. ``2 of 20 masks flagged for review: A (TTA agreement 0.64), B (...); see review.html``, worst first."""
    flagged = sorted(
        (row for row in rows if int(row['flag'])),
        key=lambda row: -1 if row['predicted_dice'] == '' else row['predicted_dice'],
    )
    named = ', '.join(f'{row["case"]} ({row["reasons"]})' for row in flagged[:FLAGGED_LISTED])
    more = f' and {len(flagged) - FLAGGED_LISTED} more' if len(flagged) > FLAGGED_LISTED else ''
    return (
        f'{len(flagged)} of {len(rows)} masks flagged for review'
        + (f': {named}{more}' if flagged else '')
        + f'; see {page}'
    )


def _page_fields(record: dict) -> dict:
    return {
        'status': record['status'],
        **({'thumbnail': f'{THUMBNAILS}/{record["case"]}.png'} if record['status'] == 'ok' else {}),
    }


def _missing(case_id: str) -> dict:
    return {
        'case': case_id,
        'status': 'failed',
        'error': 'no result: the process predicting it stopped before finishing it',
    }


def _undefined_as_nan(row: dict) -> dict:
    return {key: math.nan if value is None else value for key, value in row.items()}


def _plain(value):
    """JSON-safe: NaN (an undefined measure) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
