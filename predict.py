"""Predict label masks for new scans, in each scan's exact grid, and evaluate them.

Every mask has the input's shape, affine, qform/sform and orientation. The
checkpoint carries everything else: architecture, spacing, normalisation,
patch size and label values.

Example:
    python predict.py --checkpoint runs/la/best.pt --input scans/ --output masks/
    python predict.py --checkpoint runs/la/best.pt --input ../shared/data/LA2018/dataset.json \\
        --subset validation --output masks/ --labels ../shared/data/LA2018/labelsTr
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from scipy import ndimage
from tqdm import tqdm

from checkpoint import load_checkpoint
from data import (
    Preprocessing,
    case_id_from_path,
    check_same_grid,
    image_subject,
    load_nifti,
    read_dataset,
    read_label,
)
from errors import UserError, run_cli
from files import atomic_write, atomic_write_text, ensure_writable_dir, save_nifti
from inference import BLENDINGS, predict_logits, probabilities_to_labels
from metrics import case_metrics
from mymodel import UNet3D
from training import select_device

NIFTI_SUFFIXES = ('.nii.gz', '.nii')
METRIC_NAMES = ('dice', 'iou', 'hd95_mm', 'asd_mm', 'predicted_ml', 'reference_ml')


# Mirroring TTA is on by default, as in nnU-Net: on LA2018 it adds 0.003 to 0.006 Dice for
# 7 times the prediction time (BENCHMARKS.md); --no-tta is the fast path.
MIRRORING_TTA = True


@dataclass(frozen=True)
class InputCase:
    case_id: str
    image: Path


class Predictor:
    """A trained model plus the preprocessing it was trained with.

    Example:
        >>> predictor = Predictor(Path('runs/la/best.pt'))  # doctest: +SKIP
        >>> mask, probabilities, nifti = predictor.predict(Path('scan.nii.gz'))  # doctest: +SKIP
    """

    def __init__(self, checkpoint: Path, device: str = 'auto', batch_size: int = 2,
                 overlap: float = 0.5, blending: str = 'gaussian', tta: bool = MIRRORING_TTA, keep_largest: bool = True):
        state = load_checkpoint(checkpoint)
        self.plan = state['plan']
        self.device = select_device(device)
        try:
            self.model = UNet3D(**self.plan['model'])
            self.model.load_state_dict(state['model'])
        except (KeyError, TypeError, RuntimeError, AssertionError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise UserError(checkpoint, f'checkpoint does not match the U-Net architecture ({first_line[:200]})') from None
        self.model.to(self.device).eval()
        self.preprocessing = Preprocessing(tuple(self.plan['target_spacing']))
        self.patch_size = tuple(self.plan['patch_size'])
        self.foreground_labels = tuple(sorted(int(v) for v in self.plan['labels'] if int(v) != 0))
        self.channels = max(1, len(self.plan['modalities']))
        self.window_options = {
            'overlap': overlap, 'batch_size': batch_size, 'blending': blending,
            'device': self.device, 'amp': self.device.type == 'cuda',
        }
        self.tta = tta
        self.keep_largest = keep_largest

    def predict(self, path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
        """Return the uint8 mask and per-class probabilities in the input's grid, and the input."""
        nifti = load_nifti(path)
        subject = self.preprocessing.transform()(image_subject(path, nifti, self.channels))
        logits = predict_logits(self.model, subject['image'].data, self.patch_size, tta=self.tta, **self.window_options)
        probabilities = input_grid_probabilities(logits, subject['image'].affine, nifti)
        mask = probabilities_to_labels(probabilities, self.foreground_labels).numpy()
        if self.keep_largest:
            mask = keep_largest_components(mask, self.foreground_labels)
        return mask, probabilities.numpy(), nifti


def input_grid_probabilities(logits: torch.Tensor, affine: np.ndarray, nifti: nib.Nifti1Image) -> torch.Tensor:
    """Per-class probabilities on the input's voxel grid: the logits resampled linearly, then the sigmoid.

    As in nnU-Net, the logits are resampled, not the probabilities: a probability
    saturates within a voxel of the boundary, so interpolating it puts the 0.5
    crossing halfway between voxel centres, while the logits' zero crossing
    keeps the boundary's sub-voxel position.
    """
    return torch.sigmoid(back_to_input_grid(logits, affine, nifti))


def back_to_input_grid(volume: torch.Tensor, affine: np.ndarray, nifti: nib.Nifti1Image) -> torch.Tensor:
    """Resample a ``(C, X, Y, Z)`` volume in the grid ``affine`` linearly onto the input's voxel grid."""
    image = tio.ScalarImage(tensor=volume, affine=affine)
    return tio.Resample((nifti.shape[:3], nifti.affine), image_interpolation='linear')(image).data


def keep_largest_components(mask: np.ndarray, foreground_labels: tuple[int, ...]) -> np.ndarray:
    """Keep only the largest 26-connected component of each label."""
    result = mask.copy()
    for value in foreground_labels:
        components, count = ndimage.label(mask == value, structure=np.ones((3, 3, 3)))
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            result[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return result


def gather_inputs(source: Path, subset: str, checkpoint: Path) -> list[InputCase]:
    """Cases from one NIfTI file, a folder of them, or an MSD ``dataset.json``."""
    if source.name == 'dataset.json':
        spec = read_dataset(source.parent)
        cases = [InputCase(c.case_id, c.image) for c in spec.cases]
        return select_subset(cases, subset, checkpoint)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith('.'))
        if not files:
            raise UserError(source, 'folder holds no .nii or .nii.gz files')
        return [InputCase(case_id_from_path(p), p) for p in files]
    if not source.exists():
        raise UserError(source, 'input not found')
    return [InputCase(case_id_from_path(source), source)]


def select_subset(cases: list[InputCase], subset: str, checkpoint: Path) -> list[InputCase]:
    if subset == 'all':
        return cases
    splits_path = checkpoint.parent / 'splits.json'
    try:
        wanted = set(json.loads(splits_path.read_text())[subset])
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise UserError(splits_path, f'cannot read the {subset!r} split ({type(error).__name__})') from None
    return [case for case in cases if case.case_id in wanted]


def evaluate_case(case_id: str, mask: np.ndarray, nifti: nib.Nifti1Image, label_path: Path,
                  labels: dict[str, str], image_path: Path) -> list[dict]:
    """Per-class metrics of one predicted mask against its reference label file."""
    label_nifti = load_nifti(label_path)
    check_same_grid(image_path, nifti, label_path, label_nifti)
    reference = read_label(label_path, label_nifti, {int(k): v for k, v in labels.items()})[0]
    spacing = tuple(float(z) for z in nifti.header.get_zooms()[:3])
    rows = []
    for value, name in sorted((int(k), v) for k, v in labels.items()):
        if value:
            rows.append({'case': case_id, 'label': value, 'name': name,
                         **case_metrics(mask == value, reference == value, spacing)})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean, std and median of every metric per label; NaN distances are counted, not averaged."""
    summary = {}
    for value in sorted({row['label'] for row in rows}):
        label_rows = [row for row in rows if row['label'] == value]
        stats = {'cases': len(label_rows)}
        for metric in METRIC_NAMES:
            values = np.array([row[metric] for row in label_rows], dtype=float)
            finite = values[np.isfinite(values)]
            stats[metric] = {
                'mean': float(finite.mean()) if finite.size else None,
                'std': float(finite.std()) if finite.size else None,
                'median': float(np.median(finite)) if finite.size else None,
                'undefined': int((~np.isfinite(values)).sum()),
            }
        summary[str(value)] = stats
    return summary


def write_evaluation(rows: list[dict], output: Path) -> str:
    """Write metrics.csv and summary.json; return a printable table."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=['case', 'label', 'name', *METRIC_NAMES], lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output / 'metrics.csv', buffer.getvalue())
    summary = summarise(rows)
    atomic_write_text(output / 'summary.json', json.dumps(summary, indent=2))
    lines = [f'{"case":<28}{"label":>6}' + ''.join(f'{m:>14}' for m in METRIC_NAMES)]
    for row in rows:
        lines.append(f'{row["case"]:<28}{row["label"]:>6}' + ''.join(f'{row[m]:>14.4f}' for m in METRIC_NAMES))
    for value, stats in summary.items():
        means = ''.join(f'{_format(stats[m]["mean"]):>14}' for m in METRIC_NAMES)
        stds = ''.join(f'{_format(stats[m]["std"]):>14}' for m in METRIC_NAMES)
        lines += [f'{"mean":<28}{value:>6}' + means, f'{"std":<28}{value:>6}' + stds]
    return '\n'.join(lines)


def _format(value: float | None) -> str:
    return 'n/a' if value is None else f'{value:.4f}'


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
    spacing = canonical.header.get_zooms()[:3]
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
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, required=True, help='a best.pt or last.pt written by main.py')
    parser.add_argument('--input', type=Path, required=True, help='a .nii/.nii.gz scan, a folder of them, or an MSD dataset.json')
    parser.add_argument('--output', type=Path, required=True, help='folder for <case>.nii.gz masks (and metrics)')
    parser.add_argument('--subset', choices=('all', 'training', 'validation'), default='all',
                        help="with a dataset.json input: which cases of the checkpoint's run splits.json to predict")
    parser.add_argument('--labels', type=Path, help='folder of reference <case>.nii.gz label maps: evaluate the predictions')
    parser.add_argument('--tta', action=argparse.BooleanOptionalAction, default=MIRRORING_TTA,
                        help='mirroring test-time augmentation: the mean of the 8 axis flips (--no-tta: about 7x faster)')
    parser.add_argument('--keep-largest', action=argparse.BooleanOptionalAction, default=True,
                        help='keep only the largest connected component per label')
    parser.add_argument('--save-probabilities', action='store_true', help='also write <case>_probabilities.nii.gz (float32, one channel per label)')
    parser.add_argument('--png', action='store_true', help='also write <case>.png with three orthogonal slices and the mask contour')
    parser.add_argument('--overlap', type=float, default=0.5, help='sliding-window overlap fraction')
    parser.add_argument('--blending', choices=BLENDINGS, default='gaussian', help='window blending weights')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps')
    parser.add_argument('--batch-size', type=int, default=2, help='windows per forward pass')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    predictor = Predictor(args.checkpoint, args.device, args.batch_size, args.overlap, args.blending, args.tta, args.keep_largest)
    cases = gather_inputs(args.input, args.subset, args.checkpoint)
    ensure_writable_dir(args.output)
    rows, failures = [], 0
    for case in tqdm(cases, desc='Predicting', unit='case'):
        try:
            rows += predict_one(predictor, case, args)
        except UserError as error:
            failures += 1
            tqdm.write(f'error: {error} (case skipped)', file=sys.stderr)
    if rows:
        print(write_evaluation(rows, args.output))
    print(f'Wrote {len(cases) - failures} masks to {args.output}' + (f'; {failures} case(s) failed' if failures else ''))
    return 2 if failures else 0


def predict_one(predictor: Predictor, case: InputCase, args: argparse.Namespace) -> list[dict]:
    mask, probabilities, nifti = predictor.predict(case.image)
    save_nifti(mask.astype(np.uint8), nifti.affine, args.output / f'{case.case_id}.nii.gz', like=nifti)
    if args.save_probabilities:
        save_nifti(np.moveaxis(probabilities, 0, -1).astype(np.float32), nifti.affine,
                   args.output / f'{case.case_id}_probabilities.nii.gz', like=nifti)
    if args.png:
        save_overview_png(nifti, mask, args.output / f'{case.case_id}.png')
    if args.labels is None:
        return []
    label_path = next((args.labels / f'{case.case_id}{s}' for s in NIFTI_SUFFIXES if (args.labels / f'{case.case_id}{s}').is_file()), None)
    if label_path is None:
        raise UserError(args.labels / f'{case.case_id}.nii.gz', 'reference label not found')
    return evaluate_case(case.case_id, mask, nifti, label_path, predictor.plan['labels'], case.image)


if __name__ == '__main__':
    sys.exit(run_cli(main))
