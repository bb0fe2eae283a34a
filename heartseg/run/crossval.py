"""K-fold cross-validation: fold folders, time shares, out-of-fold scoring and the pooled score.

A cross-validation run folder ``R`` holds ``R/config.json`` (``folds`` K,
``fold`` None) and one complete run folder per fold, ``R/fold_0`` …
``R/fold_{K-1}``. When a fold has trained, its validation cases are predicted
at their original resolution by :class:`prediction.Predictor`, with
``predict.py``'s defaults but no post-processing, into
``R/fold_i/validation/`` (masks, ``metrics.csv``, ``summary.json``);
``scored.json`` is written last and marks the fold as finished. After the
last fold, ``R/crossval.csv`` pools every case and ``R/crossval.json`` gives
mean ± std per structure, over all cases and per fold, and the
post-processing these out-of-fold masks chose (:func:`heartseg.inference.postprocessing.choose`),
which ``predict.py --checkpoint R`` applies.

Folds trained apart (``--folds K --fold I --run-dir R/fold_I``, one per GPU or
per job) are scored and pooled afterwards by :func:`score_trained_folds`
(``python main.py --score-folds R``), into the same files.

Example:
    >>> fold_folder(Path('runs/cv'), 3)
    PosixPath('runs/cv/fold_3')
    >>> round(fold_training_minutes(60, fold=0, folds=5, spent_seconds=0, seconds_per_case=None, cases=13), 2)
    10.8
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from heartseg.checkpoint import load_checkpoint
from heartseg.data.cases import Case
from heartseg.data.dataset import read_dataset
from heartseg.data.reading import load_nifti
from heartseg.errors import UserError
from heartseg.files import atomic_write_text, save_nifti, write_rows_csv
from heartseg.inference.postprocessing import Postprocessing, choose
from heartseg.inference.prediction import (
    METRIC_NAMES,
    Predictor,
    evaluate_case,
    read_reference,
    summarise,
    write_evaluation,
)
from heartseg.outputs import Outputs
from heartseg.planning.config import load_config, save_config

FOLD_PREFIX = 'fold_'
SCORED_MARKER = 'scored.json'
# Until one fold's scoring has been timed, a fold reserves this share of its time for it
# (on LA2018 at 0.625 mm with TTA it took about 7 %).
FIRST_SCORING_SHARE = 0.1
# A fold always trains at least one epoch, however little time is left.
MINIMUM_TRAINING_SECONDS = 1.0


def fold_folder(root: Path, fold: int) -> Path:
    return root / f'{FOLD_PREFIX}{fold}'


def is_cross_validation(folder: Path) -> bool:
    return fold_folder(folder, 0).is_dir()


def fold_checkpoints(root: Path) -> list[Path]:
    """Every fold's best.pt of a finished cross-validation, in fold order.

    Raises:
        UserError: A fold has no best.pt yet, so an ensemble would silently lack it.
    """
    folds = load_config(root / 'config.json').folds
    checkpoints = [fold_folder(root, fold) / 'best.pt' for fold in range(folds)]
    missing = [fold for fold, checkpoint in enumerate(checkpoints) if not checkpoint.is_file()]
    if not folds or missing:
        raise UserError(
            root,
            f'not a finished cross-validation: folds {missing} of {folds} have no best.pt yet '
            f'(finish it with: python main.py --resume {root})',
        )
    return checkpoints


def resolve_checkpoints(paths: list[Path]) -> list[Path]:
    """Checkpoint files: a file as given, a run folder's best.pt, or every fold's best.pt of a cross-validation."""
    checkpoints = []
    for path in paths:
        if not path.is_dir():
            checkpoints.append(path)
        elif is_cross_validation(path):
            checkpoints += fold_checkpoints(path)
        elif (path / 'best.pt').is_file():
            checkpoints.append(path / 'best.pt')
        else:
            raise UserError(path, 'folder holds neither best.pt nor a cross-validation (fold_*/best.pt)')
    return checkpoints


def fold_training_minutes(
    total_minutes: float, fold: int, folds: int, spent_seconds: float, seconds_per_case: float | None, cases: int
) -> float:
    """A fold's training budget: an equal share of the time left to the folds not yet done, less its scoring.

    Args:
        spent_seconds: Training and scoring time of the folds already done.
        seconds_per_case: Scoring time per case measured on earlier folds, or
            None before any fold has been scored.
        cases: The fold's validation cases.
    """
    share = (total_minutes * 60 - spent_seconds) / (folds - fold)
    scoring = seconds_per_case * cases if seconds_per_case is not None else FIRST_SCORING_SHARE * share
    return max(share - scoring, MINIMUM_TRAINING_SECONDS) / 60


def schedule_line(folds: int, time_limit: float, root: Path) -> str:
    line = f'Cross-validation: {folds} folds in turn, into {fold_folder(root, 0)} … {fold_folder(root, folds - 1)}'
    if time_limit:
        line += (
            f'; the {time_limit:g}-minute limit covers them all: each fold gets an equal share of the time left, '
            f'of which it keeps what scoring its validation cases takes (timed on the first fold, '
            f'{FIRST_SCORING_SHARE:.0%} until then) and trains for the rest'
        )
    return (
        line
        + ". Each fold then predicts its validation cases at their original resolution, with predict.py's defaults."
    )


def is_scored(fold_dir: Path) -> bool:
    return (fold_dir / SCORED_MARKER).is_file()


def scored_seconds(root: Path, folds: int) -> tuple[float, float | None]:
    """Time spent by the scored folds, and their scoring seconds per case (None if none is scored)."""
    records = [
        json.loads((fold_folder(root, fold) / SCORED_MARKER).read_text())
        for fold in range(folds)
        if is_scored(fold_folder(root, fold))
    ]
    if not records:
        return 0.0, None
    spent = sum(r['training_seconds'] + r['scoring_seconds'] for r in records)
    return spent, sum(r['scoring_seconds'] for r in records) / sum(r['cases'] for r in records)


def score_fold(fold_dir: Path, fold: int, cases: list[Case], device: str, training_seconds: float) -> None:
    """Predict the fold's validation cases with its best.pt, evaluate them, and mark the fold as scored."""
    started = time.perf_counter()
    predictor = Predictor(fold_dir / 'best.pt', device=device, postprocessing=Postprocessing.none())
    output = fold_dir / 'validation'
    rows = []
    for case in tqdm(cases, desc=f'Scoring fold {fold}', unit='case', leave=False):
        mask, _, nifti = predictor.predict(case.image)
        save_nifti(mask, nifti.affine, output / f'{case.case_id}.nii.gz', like=nifti)
        rows += [
            {'fold': fold, **row}
            for row in evaluate_case(case.case_id, mask, nifti, case.label, predictor.outputs, case.image)
        ]
    write_evaluation(rows, output)
    record = {
        'fold': fold,
        'cases': len(cases),
        'training_seconds': training_seconds,
        'scoring_seconds': time.perf_counter() - started,
    }
    atomic_write_text(fold_dir / SCORED_MARKER, json.dumps(record, indent=1))


def score_trained_fold(fold_dir: Path, fold: int, cases: list[Case], device: str) -> None:
    """Score a fold whose training has ended: its validation cases (from its splits.json), timed by its last.pt."""
    validation_ids = set(json.loads((fold_dir / 'splits.json').read_text())['validation'])
    training_seconds = float(load_checkpoint(fold_dir / 'last.pt')['elapsed_seconds'])
    score_fold(fold_dir, fold, [case for case in cases if case.case_id in validation_ids], device, training_seconds)


def score_trained_folds(root: Path, device: str = 'auto') -> str:
    """Score every fold of ``root`` not yet scored, then pool them all into crossval.csv and crossval.json.

    The folds may have been trained apart, in any order. ``root/config.json``
    is written from fold 0's if missing, so that ``predict.py --checkpoint
    root`` ensembles the folds.

    Raises:
        UserError: A fold is missing or unfinished, the folds disagree on K or
            the dataset, or their validation sets do not partition the cases.
    """
    configs = _fold_configs(root)
    folds = configs[0].folds
    spec = read_dataset(Path(configs[0].data))
    _check_validation_partition(root, folds)
    for fold in tqdm(range(folds), desc='Scoring folds', unit='fold', leave=False):
        if not is_scored(fold_folder(root, fold)):
            score_trained_fold(fold_folder(root, fold), fold, list(spec.cases), device)
    if not (root / 'config.json').is_file():
        save_config(replace(configs[0], fold=None, run_dir=str(root), time_limit=0.0), root / 'config.json')
    return write_cross_validation(root, folds, configs[0].outputs, list(spec.cases))


def _fold_configs(root: Path) -> list:
    """Every fold's config, in fold order, once each fold is checked to be fold I of
    the same K, on the same data, and finished."""
    if not root.is_dir():
        raise UserError(root, 'folder not found')
    found = sorted(
        int(p.name[len(FOLD_PREFIX) :]) for p in root.glob(f'{FOLD_PREFIX}*') if p.name[len(FOLD_PREFIX) :].isdigit()
    )
    if not found:
        raise UserError(
            root,
            f'holds no {FOLD_PREFIX}I folders; train each fold with: '
            f'python main.py --folds K --fold I --run-dir {root}/{FOLD_PREFIX}I',
        )
    configs = {fold: load_config(fold_folder(root, fold) / 'config.json') for fold in found}
    first = configs[found[0]]
    for fold, config in configs.items():
        folder = fold_folder(root, fold)
        if (config.folds, config.fold) != (first.folds, fold):
            raise UserError(
                folder,
                f'trained as fold {config.fold} of {config.folds}, not as fold {fold} of '
                f'{first.folds} ({FOLD_PREFIX}{found[0]} is one of {first.folds})',
            )
        if config.data != first.data:
            raise UserError(folder, f'trained on {config.data}, {FOLD_PREFIX}{found[0]} on {first.data}')
        if not _finished(folder):
            raise UserError(folder, f'has not finished training; finish it with: python main.py --resume {folder}')
    missing = sorted(set(range(first.folds)) - set(found))
    if missing:
        raise UserError(
            root,
            f'folds {missing} of {first.folds} are missing; '
            f'train them with --folds {first.folds} --fold I --run-dir {root}/{FOLD_PREFIX}I',
        )
    return [configs[fold] for fold in range(first.folds)]


def _finished(fold_dir: Path) -> bool:
    if not (fold_dir / 'best.pt').is_file() or not (fold_dir / 'last.pt').is_file():
        return False
    state = load_checkpoint(fold_dir / 'last.pt')
    return state['epoch'] >= state['total_epochs']


def _check_validation_partition(root: Path, folds: int) -> None:
    seen: dict[str, int] = {}
    for fold in range(folds):
        path = fold_folder(root, fold) / 'splits.json'
        for case_id in json.loads(path.read_text())['validation']:
            if case_id in seen:
                raise UserError(
                    path,
                    f'case {case_id!r} validates in folds {seen[case_id]} and {fold}; '
                    'the folds come from different splits (another --split-seed or --splits file?)',
                )
            seen[case_id] = fold


def fold_rows(fold_dir: Path) -> list[dict]:
    path = fold_dir / 'validation' / 'metrics.csv'
    try:
        with open(path, newline='') as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise UserError(path, f"cannot read the fold's scores ({error.strerror})") from None
    numeric = {'fold': int, 'label': int, **{metric: float for metric in METRIC_NAMES}}
    return [{key: numeric.get(key, str)(value) for key, value in row.items()} for row in rows]


def write_cross_validation(root: Path, folds: int, outputs: Outputs, cases: list[Case]) -> str:
    """Pool every fold's scores into crossval.csv and crossval.json with the post-processing
    they choose, log them, and return a report."""
    per_fold = {fold: fold_rows(fold_folder(root, fold)) for fold in range(folds)}
    rows = [row for fold_rows_ in per_fold.values() for row in fold_rows_]
    write_rows_csv(root / 'crossval.csv', rows)
    chosen, dice = choose(lambda: out_of_fold_masks(root, folds, cases, outputs), outputs)
    document = {
        'folds': folds,
        'cases': len({row['case'] for row in rows}),
        'pooled': summarise(rows),
        'per_fold': {str(fold): summarise(fold_rows_) for fold, fold_rows_ in per_fold.items()},
        'postprocessing': {
            **chosen.to_dict(),
            'description': chosen.describe(outputs),
            'mean_dice_before': dict(zip(outputs.names, dice['before'])),
            'mean_dice_after': dict(zip(outputs.names, dice['after'])),
        },
    }
    atomic_write_text(root / 'crossval.json', json.dumps(document, indent=2))
    log_to_tensorboard(root, document)
    return report(document)


def out_of_fold_masks(
    root: Path, folds: int, cases: list[Case], outputs: Outputs
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each validation case's out-of-fold mask (before post-processing) and its reference label map."""
    by_id = {case.case_id: case for case in cases}
    for fold in range(folds):
        fold_dir = fold_folder(root, fold)
        for case_id in json.loads((fold_dir / 'splits.json').read_text())['validation']:
            case = by_id[case_id]
            mask = load_nifti(fold_dir / 'validation' / f'{case_id}.nii.gz')
            yield np.asarray(mask.dataobj, dtype=np.uint8), read_reference(case.label, mask, outputs, case.image)


def postprocessing_of(root: Path) -> Postprocessing | None:
    """The post-processing a finished cross-validation chose, or None (an older one, which chose none)."""
    path = root / 'crossval.json'
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text()).get('postprocessing')
        return None if values is None else Postprocessing.from_dict(values)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise UserError(path, f'cannot read its post-processing ({type(error).__name__}: {error})') from None


def log_to_tensorboard(root: Path, document: dict) -> None:
    with SummaryWriter(root) as writer:
        for label, stats in document['pooled'].items():
            for metric in METRIC_NAMES:
                if stats[metric]['mean'] is not None:
                    writer.add_scalar(f'crossval/{metric}/label_{label}', stats[metric]['mean'], document['folds'])
        for fold, summary in document['per_fold'].items():
            for label, stats in summary.items():
                writer.add_scalar(f'crossval/dice_per_fold/label_{label}', stats['dice']['mean'], int(fold))


def report(document: dict) -> str:
    lines = [
        f'Cross-validation over {document["cases"]} cases in {document["folds"]} folds, '
        'at the original resolution, before post-processing:'
    ]
    for label, stats in document['pooled'].items():
        lines.append(f'  {stats["name"]} (label {label}): ' + _metrics_text(stats))
        for fold, summary in document['per_fold'].items():
            lines.append(f'    fold {fold} ({summary[label]["cases"]} cases): ' + _metrics_text(summary[label]))
    postprocessing = document['postprocessing']
    before, after = postprocessing['mean_dice_before'], postprocessing['mean_dice_after']
    changes = ', '.join(f'{name} {before[name]:.4f} → {after[name]:.4f}' for name in before)
    lines.append(
        'Post-processing chosen on these out-of-fold masks (so its gain is optimistic): '
        f'{postprocessing["description"]} (Dice {changes})'
    )
    return '\n'.join(lines)


def _metrics_text(stats: dict) -> str:
    parts = []
    for metric, name, unit in (
        ('dice', 'Dice', ''),
        ('iou', 'IoU', ''),
        ('hd95_mm', 'HD95', ' mm'),
        ('asd_mm', 'ASD', ' mm'),
    ):
        mean, std = stats[metric]['mean'], stats[metric]['std']
        parts.append(f'{name} n/a' if mean is None or math.isnan(mean) else f'{name} {mean:.4f} ± {std:.4f}{unit}')
    return ', '.join(parts)
