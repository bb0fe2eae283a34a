"""Predict label masks for new scans, in each scan's exact grid, and evaluate them.

Every mask has the input's shape, affine, qform/sform and orientation. The
checkpoint carries everything else: architecture, spacing, normalisation,
patch size and label values. Several checkpoints, or a cross-validation run
folder, predict as one ensemble. An ONNX or TorchScript file written by
export.py runs through the same steps.

Example:
    python predict.py --checkpoint runs/la/best.pt --input scans/ --output masks/
    python predict.py --checkpoint runs/la/best.pt --input ../shared/data/LA2018/dataset.json \\
        --subset validation --output masks/ --labels ../shared/data/LA2018/labelsTr
    python predict.py --checkpoint runs/cv --input scans/ --output masks/   # the 5-fold ensemble
    python predict.py --checkpoint la.onnx --input scans/ --output masks/   # a file from export.py
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from heartseg.cli import Parser, integer, number
from heartseg.crossval import fold_checkpoints, is_cross_validation, resolve_checkpoints
from heartseg.data import case_id_from_path, read_dataset
from heartseg.errors import EXIT_USER_ERROR, UserError, run_cli
from heartseg.files import atomic_write, ensure_writable_dir, save_nifti
from heartseg.inference import (
    BLENDINGS,
    DEFAULT_BLENDING,
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW_BATCH,
)
from heartseg.prediction import (
    MIRRORING_TTA,
    Predictor,
    evaluate_case,
    write_evaluation,
)

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


def gather_inputs(source: Path, subset: str) -> list[InputCase]:
    """Cases from one NIfTI file, a folder of them, or an MSD ``dataset.json``."""
    if subset != 'all' and source.name != 'dataset.json':
        raise UserError('--subset', f'{subset!r} selects cases of a dataset.json --input, not of {source}')
    if source.name == 'dataset.json':
        spec = read_dataset(source.parent)
        return [InputCase(c.case_id, c.image, c.label) for c in spec.cases]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith('.'))
        if not files:
            raise UserError(source, 'folder holds no .nii or .nii.gz files')
        return [InputCase(case_id_from_path(p), p) for p in files]
    if not source.exists():
        raise UserError(source, 'input not found')
    return [InputCase(case_id_from_path(source), source)]


def prediction_jobs(cases: list[InputCase], subset: str, checkpoint_paths: list[Path]) -> list[PredictionJob]:
    """One ensemble for all cases, or, for a split's cases, the model of each case's run.

    With a cross-validation folder, ``--subset validation`` predicts each fold's
    validation cases with that fold's own model: its out-of-fold predictions.
    """
    if subset == 'all':
        return [PredictionJob(resolve_checkpoints(checkpoint_paths), cases)]
    one_folder = len(checkpoint_paths) == 1 and checkpoint_paths[0].is_dir()
    folds = fold_checkpoints(checkpoint_paths[0]) if one_folder and is_cross_validation(checkpoint_paths[0]) else []
    if folds and subset == 'validation':
        return [PredictionJob([fold], select_subset(cases, subset, fold.parent / 'splits.json')) for fold in folds]
    if folds:
        raise UserError('--subset', "'training' cases of a cross-validation belong to several folds; use 'validation' (each fold's own cases) or 'all'")
    checkpoints = resolve_checkpoints(checkpoint_paths)
    if len(checkpoints) > 1:
        raise UserError('--subset', f'{subset!r} needs one checkpoint or one cross-validation folder; an ensemble of {len(checkpoints)} checkpoints has no split of its own')
    return [PredictionJob(checkpoints, select_subset(cases, subset, checkpoints[0].parent / 'splits.json'))]


def select_subset(cases: list[InputCase], subset: str, splits_path: Path) -> list[InputCase]:
    try:
        wanted = set(json.loads(splits_path.read_text())[subset])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(splits_path, f'cannot read the {subset!r} split ({type(error).__name__})') from None
    selected = [case for case in cases if case.case_id in wanted]
    if not selected:
        raise UserError(splits_path, f'none of its {len(wanted)} {subset!r} cases is in the --input dataset; is it the dataset the run trained on?')
    return selected


def save_overview_png(image: nib.Nifti1Image, mask: np.ndarray, path: Path) -> None:
    """Axial, coronal and sagittal slices through the structure, with its contour."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    canonical = nib.as_closest_canonical(image)
    canonical_mask = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(mask, image.affine)).dataobj)
    volume = np.asarray(canonical.dataobj, dtype=np.float32)
    volume = volume[..., 0] if volume.ndim == 4 else volume
    centre = ndimage.center_of_mass(canonical_mask > 0) if canonical_mask.any() else np.array(volume.shape) / 2
    spacing = nib.affines.voxel_sizes(canonical.affine)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.5))
    views = [('axial', 2, (0, 1)), ('coronal', 1, (0, 2)), ('sagittal', 0, (1, 2))]
    low, high = np.percentile(volume, (0.5, 99.5))
    for axis, (title, slice_axis, (h, v)) in zip(axes, views):
        index = [slice(None)] * 3
        index[slice_axis] = int(round(centre[slice_axis]))
        picture, outline = volume[tuple(index)].T, canonical_mask[tuple(index)].T
        aspect = spacing[v] / spacing[h]
        axis.imshow(picture, cmap='gray', origin='lower', vmin=low, vmax=high, aspect=aspect)
        if outline.any():
            axis.contour(outline > 0, levels=[0.5], colors='red', linewidths=1)
        axis.set_title(title)
        axis.axis('off')
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format='png', dpi=80))
    plt.close(figure)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, nargs='+', required=True,
                        help='a best.pt or last.pt written by main.py, a run folder (its best.pt), an ONNX or TorchScript '
                             "file written by export.py, or several: their ensemble. A cross-validation run folder means every fold's best.pt")
    parser.add_argument('--input', type=Path, required=True, help='a .nii/.nii.gz scan, a folder of them, or an MSD dataset.json')
    parser.add_argument('--output', type=Path, required=True, help='folder for <case>.nii.gz masks (and metrics)')
    parser.add_argument('--subset', choices=('all', 'training', 'validation'), default='all',
                        help="with a dataset.json input: which cases of the checkpoint's run splits.json to predict "
                             "(a cross-validation folder: each fold's validation cases, by that fold's model)")
    parser.add_argument('--labels', type=Path, help='folder of reference <case>.nii.gz label maps: evaluate the predictions')
    parser.add_argument('--tta', action=argparse.BooleanOptionalAction, default=MIRRORING_TTA,
                        help='mirroring test-time augmentation: the mean of the 8 axis flips (--no-tta: about 7x faster)')
    parser.add_argument('--keep-largest', action=argparse.BooleanOptionalAction, default=True,
                        help='keep only the largest connected component per label')
    parser.add_argument('--save-probabilities', action='store_true', help='also write <case>_probabilities.nii.gz (float32, one channel per label)')
    parser.add_argument('--png', action='store_true', help='also write <case>.png with three orthogonal slices and the mask contour')
    parser.add_argument('--overlap', type=number(0, below=1), default=DEFAULT_OVERLAP, help='sliding-window overlap fraction')
    parser.add_argument('--blending', choices=BLENDINGS, default=DEFAULT_BLENDING, help='window blending weights')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps')
    parser.add_argument('--batch-size', type=integer(1), default=DEFAULT_WINDOW_BATCH, help='windows per forward pass')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    jobs = prediction_jobs(gather_inputs(args.input, args.subset), args.subset, args.checkpoint)
    predictors = [Predictor(job.checkpoints, args.device, args.batch_size, args.overlap, args.blending, args.tta, args.keep_largest)
                  for job in jobs]
    if len(predictors[0].models) > 1:
        print(f'Ensemble of {len(predictors[0].models)} models: their probabilities are averaged in each input grid')
    refuse_overwriting_inputs(args.output, [case for job in jobs for case in job.cases], args.labels)
    ensure_writable_dir(args.output)
    rows, written, failures, total = [], 0, 0, sum(len(job.cases) for job in jobs)
    with tqdm(total=total, desc='Predicting', unit='case') as progress:
        for predictor, job in zip(predictors, jobs):
            for case in job.cases:
                try:
                    mask, nifti = write_prediction(predictor, case, args)
                    written += 1
                    if args.labels is not None:
                        rows += evaluate_prediction(predictor, case, mask, nifti, args.labels)
                except UserError as error:
                    failures += 1
                    tqdm.write(f'error: {error} (case skipped)', file=sys.stderr)
                progress.update()
    if rows:
        print(write_evaluation(rows, args.output))
    print(f'Wrote {written} masks to {args.output}' + (f'; {failures} case(s) failed' if failures else ''))
    return EXIT_USER_ERROR if failures else 0


def refuse_overwriting_inputs(output: Path, cases: list[InputCase], labels: Path | None) -> None:
    """Masks are named ``<case>.nii.gz``: in a scans' or the labels' folder they would replace the files they are judged by."""
    output = output.resolve()
    if labels is not None and labels.resolve() == output:
        raise UserError(output, 'is the --labels folder: the masks would overwrite the reference labels; choose another --output')
    if any(case.image.resolve().parent == output for case in cases):
        raise UserError(output, 'holds the input scans: the masks could overwrite them; choose another --output')
    if any(case.label is not None and case.label.resolve().parent == output for case in cases):
        raise UserError(output, "holds the dataset's reference labels: the masks would overwrite them; choose another --output")


def write_prediction(predictor: Predictor, case: InputCase, args: argparse.Namespace) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Predict one case and write its mask (and, if asked, its probabilities and overview)."""
    mask, probabilities, nifti = predictor.predict(case.image)
    save_nifti(mask.astype(np.uint8), nifti.affine, args.output / f'{case.case_id}.nii.gz', like=nifti)
    if args.save_probabilities:
        save_nifti(np.moveaxis(probabilities, 0, -1).astype(np.float32), nifti.affine,
                   args.output / f'{case.case_id}_probabilities.nii.gz', like=nifti)
    if args.png:
        save_overview_png(nifti, mask, args.output / f'{case.case_id}.png')
    return mask, nifti


def evaluate_prediction(predictor: Predictor, case: InputCase, mask: np.ndarray, nifti: nib.Nifti1Image, labels: Path) -> list[dict]:
    label_path = next((labels / f'{case.case_id}{s}' for s in NIFTI_SUFFIXES if (labels / f'{case.case_id}{s}').is_file()), None)
    if label_path is None:
        raise UserError(labels / f'{case.case_id}.nii.gz', 'reference label not found')
    return evaluate_case(case.case_id, mask, nifti, label_path, predictor.labels, case.image)


if __name__ == '__main__':
    sys.exit(run_cli(main))
