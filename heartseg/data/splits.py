"""Training/validation splits: seeded (a holdout fraction or K folds, by patient), or read from a file.

Seeded splits keep one patient's scans on one side: cases whose ids differ
only in a frame or time-point suffix (:func:`patient_of`), such as ACDC's
``patient001_frame01`` and ``patient001_frame12``, are one patient. A dataset
without such ids is split case by case, exactly as it was before grouping.

A splits file is nnU-Net's ``splits_final.json`` (a list of ``{"train": [...],
"val": [...]}``, one per fold) or this project's ``splits.json`` (one
``{"training": [...], "validation": [...]}``, or a list of them). Case ids are
those of :func:`heartseg.data.read_dataset`: nnU-Net's identifiers, without
the ``_0000`` channel suffix.

Example:
    >>> split_cases(['a', 'b', 'c', 'd', 'e'], seed=0, folds=5, fold=0)['validation']
    ['c']
    >>> split_cases(['p1_t1', 'p1_t2', 'p2_t1', 'p2_t2'], seed=0, folds=2, fold=0)['validation']
    ['p1_t1', 'p1_t2']
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from heartseg.errors import UserError

Split = dict[str, list[str]]
# What the ids of one patient's scans differ by: a frame or time point (ACDC's _frame01, M&Ms' _ED and _ES,
# _t0, _tp1, _visit2, BIDS's _ses-02), after an underscore or hyphen.
# A bare number (MSD's la_003) is a case, not a time.
TIME_POINT_SUFFIX = re.compile(
    r'[_-](?:(?:frame|fr|time|timepoint|tp|t|phase|visit|ses|session|scan)[-_]?\d+|ed|es)$', re.IGNORECASE
)


def split_cases(
    case_ids: Sequence[str],
    seed: int,
    val_fraction: float = 0.2,
    folds: int = 0,
    fold: int | None = None,
    group_by_patient: bool = True,
) -> Split:
    """Seeded train/validation split: a holdout fraction, or fold ``fold`` of ``folds``.

    ``val_fraction`` 0 trains on every case, with no validation (nnU-Net's fold "all").
    The K folds' validation sets partition the cases. With ``group_by_patient``
    the cases of one patient (:func:`patient_of`) always share a side.
    """
    groups = patient_groups(case_ids)
    if group_by_patient and len(groups) < len(case_ids):
        return _split_groups(groups, len(case_ids), seed, val_fraction, folds, fold)
    order = np.random.default_rng(seed).permutation(sorted(case_ids)).tolist()
    if folds:
        assert fold is not None and 0 <= fold < folds, f'fold must be in [0, {folds}), got {fold}'
        validation = order[fold::folds]
    else:
        assert 0 <= val_fraction < 1, f'val_fraction must be in [0, 1), got {val_fraction}'
        validation = order[: max(1, round(len(order) * val_fraction))] if val_fraction else []
    return _checked(case_ids, validation, bool(folds or val_fraction))


def patient_of(case_id: str) -> str:
    """The patient of a case: its id without a frame or time-point suffix (:data:`TIME_POINT_SUFFIX`).

    Example:
        >>> patient_of('patient001_frame01'), patient_of('A1D9Z7_sa_ED'), patient_of('la_003')
        ('patient001', 'A1D9Z7_sa', 'la_003')
    """
    return TIME_POINT_SUFFIX.sub('', case_id) or case_id


def patient_groups(case_ids: Sequence[str]) -> dict[str, list[str]]:
    """Each patient's cases, in id order."""
    groups: dict[str, list[str]] = {}
    for case_id in sorted(case_ids):
        groups.setdefault(patient_of(case_id), []).append(case_id)
    return groups


def grouping_text(case_ids: Sequence[str], group_by_patient: bool) -> str:
    """How a seeded split treats the cases, for the plan line and ``splits.json``."""
    groups = patient_groups(case_ids)
    if len(groups) == len(case_ids):
        return 'case by case (no ids differ only in a frame or time-point suffix)'
    several = sum(len(cases) > 1 for cases in groups.values())
    if not group_by_patient:
        return f'case by case, although {several} patients have several scans (--no-group-by-patient)'
    return (
        f'by patient: {len(case_ids)} scans of {len(groups)} patients, '
        f'{several} with several (ids that differ only in a frame or time-point suffix)'
    )


def _split_groups(
    groups: dict[str, list[str]], cases: int, seed: int, val_fraction: float, folds: int, fold: int | None
) -> Split:
    case_ids = [case_id for group in groups.values() for case_id in group]
    order = np.random.default_rng(seed).permutation(sorted(groups)).tolist()
    if folds:
        assert fold is not None and 0 <= fold < folds, f'fold must be in [0, {folds}), got {fold}'
        sizes = [0] * folds
        validation = []
        for group in order:  # each patient to the fold with fewest cases so far, so folds stay balanced
            smallest = int(np.argmin(sizes))
            sizes[smallest] += len(groups[group])
            validation += groups[group] if smallest == fold else []
    else:
        wanted = max(1, round(cases * val_fraction)) if val_fraction else 0
        validation = []
        for group in order:
            if len(validation) >= wanted:
                break
            validation += groups[group]
    return _checked(
        case_ids,
        validation,
        bool(folds or val_fraction),
        f' as {len(groups)} patients (by their ids without frame or time-point suffixes)',
    )


def _checked(case_ids: Sequence[str], validation: list[str], needs_validation: bool, grouping: str = '') -> Split:
    training = [case_id for case_id in case_ids if case_id not in set(validation)]
    if not training or (not validation and needs_validation):
        raise UserError(
            'dataset.json', f'{len(case_ids)} cases{grouping} are too few to split into training and validation'
        )
    return {'training': sorted(training), 'validation': sorted(validation)}


def read_splits_file(path: Path, case_ids: Sequence[str]) -> list[Split]:
    """The folds of a splits file, checked against the dataset's cases.

    Raises:
        UserError: The file is missing or not valid JSON, a fold lacks its
            lists, a case is not in the dataset, or (with two or more folds) a
            case is in no fold's validation set or in two of them.
    """
    try:
        content = json.loads(path.read_text())
    except OSError as error:
        raise UserError(path, f'cannot read the splits file ({error.strerror})') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(path, f'invalid JSON: {error}') from None
    entries = [content] if isinstance(content, dict) else content
    if not isinstance(entries, list) or not entries:
        raise UserError(
            path,
            'expected a list of folds ({"train": [...], "val": [...]}, '
            'as nnU-Net\'s splits_final.json) or one {"training": [...], "validation": [...]}',
        )
    splits = [_read_fold(entry, index, path) for index, entry in enumerate(entries)]
    known = set(case_ids)
    for index, split in enumerate(splits):
        _check_fold(split, index, known, path)
    if len(splits) > 1:
        _check_partition(splits, case_ids, path)
    return splits


def _read_fold(entry: object, index: int, path: Path) -> Split:
    for training_key, validation_key in (('train', 'val'), ('training', 'validation')):
        if isinstance(entry, dict) and training_key in entry and validation_key in entry:
            lists = entry[training_key], entry[validation_key]
            if all(isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in lists):
                return {'training': sorted(lists[0]), 'validation': sorted(lists[1])}
    raise UserError(
        path, f'fold {index} must hold "train" and "val" (or "training" and "validation") lists of case ids'
    )


def _check_fold(split: Split, index: int, known: set[str], path: Path) -> None:
    training, validation = set(split['training']), set(split['validation'])
    unknown = sorted((training | validation) - known)
    if unknown:
        raise UserError(path, f'fold {index} lists {len(unknown)} cases the dataset does not have, e.g. {unknown[0]!r}')
    both = sorted(training & validation)
    if both:
        raise UserError(path, f'fold {index} lists case {both[0]!r} for both training and validation')
    missing = sorted(known - training - validation)
    if missing:
        raise UserError(
            path,
            f"fold {index} leaves out {len(missing)} of the dataset's cases, e.g. "
            f'{missing[0]!r}; each fold must list every case once',
        )
    if not training or not validation:
        raise UserError(path, f'fold {index} has an empty {"training" if not training else "validation"} list')


def _check_partition(splits: list[Split], case_ids: Sequence[str], path: Path) -> None:
    """Every case validates in exactly one fold, or the pooled cross-validation would leave it out or count it twice."""
    folds_of: dict[str, list[int]] = {case_id: [] for case_id in case_ids}
    for index, split in enumerate(splits):
        for case_id in split['validation']:
            folds_of[case_id].append(index)
    for case_id, folds in sorted(folds_of.items()):
        if not folds:
            raise UserError(path, f"case {case_id!r} is in no fold's validation set")
        if len(folds) > 1:
            raise UserError(path, f'case {case_id!r} is in the validation sets of folds {folds[0]} and {folds[1]}')
