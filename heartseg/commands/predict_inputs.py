"""What ``predict.py`` is asked to predict: the input scans (a scan, a folder, a dataset folder or a
``dataset.json`` and its subset), the checkpoints each is predicted with, and the output folders refused
because masks there would replace the scans or labels they are judged by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from heartseg.data.cases import case_id_from_path, folder_case_ids
from heartseg.data.dataset import read_dataset
from heartseg.errors import UserError
from heartseg.files import canonical_folder
from heartseg.inference.postprocessing import Postprocessing
from heartseg.run.crossval import fold_checkpoints, is_cross_validation, postprocessing_of, resolve_checkpoints

NIFTI_SUFFIXES = ('.nii.gz', '.nii')


@dataclass(frozen=True)
class InputCase:
    case_id: str
    image: Path
    label: Path | None = None  # the reference a dataset.json names


@dataclass(frozen=True)
class PredictionJob:
    """Cases and the checkpoints (one model or an ensemble) that predict them."""

    checkpoints: list[Path]
    cases: list[InputCase]
    # None: each structure's largest component (a model with no cross-validation)
    postprocessing: Postprocessing | None = None


def gather_inputs(source: Path, subset: str) -> list[InputCase]:
    """Cases from one NIfTI file, a folder of them,
    a dataset folder's test scans, or a ``dataset.json``'s training cases."""
    if subset != 'all' and source.name != 'dataset.json':
        raise UserError('--subset', f'{subset!r} selects cases of a dataset.json --input, not of {source}')
    if source.name == 'dataset.json':
        spec = read_dataset(source.parent)
        return [InputCase(c.case_id, c.image, c.label) for c in spec.cases]
    if (source / 'dataset.json').is_file():
        test_cases = read_dataset(source).test_cases
        if not test_cases:
            raise UserError(
                source,
                'dataset holds no test scans (imagesTs/); '
                f'to predict its training cases, give {source / "dataset.json"}',
            )
        return [InputCase(c.case_id, c.image) for c in test_cases]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith('.'))
        if not files:
            raise UserError(source, 'folder holds no .nii or .nii.gz files')
        return [InputCase(case_id, p) for case_id, p in zip(folder_case_ids(files), files)]
    if not source.exists():
        raise UserError(source, 'input not found')
    return [InputCase(case_id_from_path(source), source)]


def prediction_jobs(
    cases: list[InputCase], subset: str, checkpoint_paths: list[Path], keep_largest: bool | None
) -> list[PredictionJob]:
    """One ensemble for all cases, or, for a split's cases, the model of each case's run, and their post-processing.

    With a cross-validation folder, ``--subset validation`` predicts each fold's
    validation cases with that fold's own model: its out-of-fold predictions.
    A cross-validation folder's masks get the post-processing its out-of-fold
    predictions chose, unless ``keep_largest`` (``--keep-largest`` or
    ``--no-keep-largest``) says otherwise.
    """
    one_folder = len(checkpoint_paths) == 1 and checkpoint_paths[0].is_dir()
    chosen = postprocessing_of(checkpoint_paths[0]) if one_folder and is_cross_validation(checkpoint_paths[0]) else None
    postprocessing = chosen if keep_largest is None else None if keep_largest else Postprocessing.none()
    if subset == 'all':
        return [PredictionJob(resolve_checkpoints(checkpoint_paths), cases, postprocessing)]
    folds = fold_checkpoints(checkpoint_paths[0]) if one_folder and is_cross_validation(checkpoint_paths[0]) else []
    if folds and subset == 'validation':
        return [
            PredictionJob([fold], select_subset(cases, subset, fold.parent / 'splits.json'), postprocessing)
            for fold in folds
        ]
    if folds:
        raise UserError(
            '--subset',
            "'training' cases of a cross-validation belong to several folds; "
            "use 'validation' (each fold's own cases) or 'all'",
        )
    checkpoints = resolve_checkpoints(checkpoint_paths)
    if len(checkpoints) > 1:
        raise UserError(
            '--subset',
            f'{subset!r} needs one checkpoint or one cross-validation folder; '
            f'an ensemble of {len(checkpoints)} checkpoints has no split of its own',
        )
    return [
        PredictionJob(checkpoints, select_subset(cases, subset, checkpoints[0].parent / 'splits.json'), postprocessing)
    ]


def select_subset(cases: list[InputCase], subset: str, splits_path: Path) -> list[InputCase]:
    try:
        wanted = set(json.loads(splits_path.read_text())[subset])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(splits_path, f'cannot read the {subset!r} split ({type(error).__name__})') from None
    selected = [case for case in cases if case.case_id in wanted]
    if not selected:
        raise UserError(
            splits_path,
            f'none of its {len(wanted)} {subset!r} cases is in the --input dataset; '
            'is it the dataset the run trained on?',
        )
    return selected


def label_file(labels: Path, case: InputCase) -> Path:
    found = next(
        (labels / f'{case.case_id}{s}' for s in NIFTI_SUFFIXES if (labels / f'{case.case_id}{s}').is_file()), None
    )
    if found is None:
        raise UserError(labels / f'{case.case_id}.nii.gz', 'reference label not found')
    return found


def refuse_overwriting_inputs(output: Path, cases: list[InputCase], labels: Path | None) -> None:
    """Masks are named ``<case>.nii.gz``:
    in a scans' or the labels' folder they would replace the files they are judged by."""
    output = canonical_folder(output)
    if labels is not None and canonical_folder(labels) == output:
        raise UserError(
            output, 'is the --labels folder: the masks would overwrite the reference labels; choose another --output'
        )
    # The folder a file is listed in, not where a link there points: a mask would replace the link.
    if any(canonical_folder(case.image.parent) == output for case in cases):
        raise UserError(output, 'holds the input scans: the masks could overwrite them; choose another --output')
    if any(case.label is not None and canonical_folder(case.label.parent) == output for case in cases):
        raise UserError(
            output, "holds the dataset's reference labels: the masks would overwrite them; choose another --output"
        )
