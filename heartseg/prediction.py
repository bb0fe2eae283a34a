"""A trained model, or an ensemble of them, predicting masks in each scan's exact grid; evaluation.

``predict.py`` and the cross-validation scoring in ``main.py`` both predict
through :class:`Predictor`, so their masks and numbers are computed the same
way. Every mask has the input's shape and affine; the checkpoint carries the
architecture, spacing, normalisation, patch size and label values.

Example:
    >>> predictor = Predictor([Path('runs/cv/fold_0/best.pt'), Path('runs/cv/fold_1/best.pt')])  # doctest: +SKIP
    >>> mask, probabilities, nifti = predictor.predict(Path('scan.nii.gz'))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from scipy import ndimage

from heartseg.checkpoint import ModelPlan, load_checkpoint
from heartseg.data import Preprocessing, image_subject, load_nifti, read_label
from heartseg.devices import mixed_precision_dtype, select_device
from heartseg.errors import UserError
from heartseg.export import Network, is_exported, load_exported
from heartseg.files import atomic_write_text, write_rows_csv
from heartseg.inference import (
    DEFAULT_BLENDING,
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW_BATCH,
    predict_logits,
    probabilities_to_labels,
)
from heartseg.metrics import case_metrics
from heartseg.validation import CaseCheck
from mymodel import UNet3D

METRIC_NAMES = ('dice', 'iou', 'hd95_mm', 'asd_mm', 'predicted_ml', 'reference_ml')


# Mirroring TTA is on by default, as in nnU-Net: on LA2018 it adds 0.003 to 0.006 Dice for
# 7 times the prediction time (BENCHMARKS.md); --no-tta is the fast path.
MIRRORING_TTA = True


@dataclass(frozen=True)
class TrainedModel:
    """One model's network, with the preprocessing and patch size it was trained with."""

    checkpoint: Path
    network: Network
    preprocessing: Preprocessing
    patch_size: tuple[int, int, int]
    labels: dict[str, str]
    channels: int


def load_network(checkpoint: Path, device: torch.device) -> tuple[UNet3D, ModelPlan]:
    """The U-Net of a training checkpoint, in eval mode on ``device``, and its plan."""
    state = load_checkpoint(checkpoint)
    plan = state['plan']
    try:
        network = UNet3D(**plan.model)
        network.load_state_dict(state['model'])
    except (KeyError, TypeError, RuntimeError, AssertionError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(checkpoint, f'checkpoint does not match the U-Net architecture ({first_line[:200]})') from None
    return network.to(device).eval(), plan


def load_trained_model(path: Path, device: torch.device) -> TrainedModel:
    """A training checkpoint, or an ONNX or TorchScript file from ``export.py``."""
    network, plan = load_exported(path, device) if is_exported(path) else load_network(path, device)
    return TrainedModel(
        checkpoint=path,
        network=network,
        preprocessing=Preprocessing.for_plan(plan, path),
        patch_size=plan.patch_size,
        labels=plan.labels,
        channels=plan.channels,
    )


def check_ensemble(models: list[TrainedModel]) -> None:
    """Models can be averaged only when they agree on the labels and the input channels."""
    first = models[0]
    for other in models[1:]:
        for what, ours, theirs in (('labels', first.labels, other.labels), ('input channels', first.channels, other.channels)):
            if ours != theirs:
                raise UserError(other.checkpoint, f'its {what} {theirs} differ from {first.checkpoint}\'s {ours}; an ensemble needs the same labels and input channels')


class Predictor:
    """One trained model, or an ensemble of several, plus the preprocessing each was trained with.

    Each model predicts the scan at its own spacing and patch size (with TTA if
    asked), its logits are resampled to the input grid, and the models' outputs
    are averaged there before thresholding.

    Example:
        >>> predictor = Predictor(Path('runs/la/best.pt'))  # doctest: +SKIP
        >>> mask, probabilities, nifti = predictor.predict(Path('scan.nii.gz'))  # doctest: +SKIP
        >>> folds = Predictor([Path(f'runs/cv/fold_{i}/best.pt') for i in range(5)])  # doctest: +SKIP
    """

    def __init__(self, checkpoints: Path | Sequence[Path], device: str = 'auto', batch_size: int = DEFAULT_WINDOW_BATCH,
                 overlap: float = DEFAULT_OVERLAP, blending: str = DEFAULT_BLENDING, tta: bool = MIRRORING_TTA,
                 keep_largest: bool = True):
        self.device = select_device(device)
        paths = [checkpoints] if isinstance(checkpoints, Path) else list(checkpoints)
        self.models = [load_trained_model(path, self.device) for path in paths]
        check_ensemble(self.models)
        self.labels = self.models[0].labels
        self.foreground_labels = tuple(sorted(int(v) for v in self.labels if int(v) != 0))
        self.channels = self.models[0].channels
        self.window_options = {
            'overlap': overlap, 'batch_size': batch_size, 'blending': blending,
            'device': self.device, 'amp_dtype': mixed_precision_dtype(self.device),
        }
        self.tta = tta
        self.keep_largest = keep_largest

    def input_grid_logits(self, path: Path, nifti: nib.Nifti1Image) -> Iterator[torch.Tensor]:
        """Each model's logits ``(C, X, Y, Z)``, resampled linearly onto the input's voxel grid."""
        preprocessed: dict[Preprocessing, tio.Subject] = {}  # folds of one run share their preprocessing
        for model in self.models:
            if model.preprocessing not in preprocessed:
                preprocessed[model.preprocessing] = model.preprocessing(image_subject(path, nifti, self.channels))
            image = preprocessed[model.preprocessing]['image']
            logits = predict_logits(model.network, image.data, model.patch_size, tta=self.tta, **self.window_options)
            yield back_to_input_grid(logits, image.affine, nifti)

    def predict(self, path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
        """Return the uint8 mask and per-class probabilities in the input's grid, and the input."""
        nifti = load_nifti(path)
        probabilities = ensemble_probabilities(self.input_grid_logits(path, nifti))
        return self.mask(probabilities), probabilities.numpy(), nifti

    def mask(self, probabilities: torch.Tensor) -> np.ndarray:
        """Threshold per-class probabilities into a label map, keeping the largest component if asked."""
        mask = probabilities_to_labels(probabilities, self.foreground_labels).numpy()
        return keep_largest_components(mask, self.foreground_labels) if self.keep_largest else mask


def ensemble_probabilities(input_grid_logits: Iterable[torch.Tensor]) -> torch.Tensor:
    """The models' mean probability (nnU-Net's ensembling); one model's is the sigmoid of its logits.

    The logits are resampled to the input grid before the sigmoid, as in nnU-Net:
    a probability saturates within a voxel of the boundary, so interpolating it
    puts the 0.5 crossing halfway between voxel centres, while the logits' zero
    crossing keeps the boundary's sub-voxel position.
    """
    total, count = None, 0
    for logits in input_grid_logits:
        probabilities = torch.sigmoid(logits)
        total = probabilities if total is None else total.add_(probabilities)
        count += 1
    return total / count


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


def evaluate_case(case_id: str, mask: np.ndarray, nifti: nib.Nifti1Image, label_path: Path,
                  labels: dict[str, str], image_path: Path) -> list[dict]:
    """Per-class metrics of one predicted mask against its reference label file."""
    label_nifti = load_nifti(label_path)
    CaseCheck(case_id, strict=True).same_grid(image_path, nifti, label_path, label_nifti)
    reference = read_label(label_path, label_nifti, [int(value) for value in labels])[0]
    spacing = tuple(float(z) for z in nib.affines.voxel_sizes(nifti.affine))  # the mask's grid is the affine's
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
                'count': int(finite.size),  # the cases averaged; the undefined ones (an empty mask) are left out
                'undefined': int((~np.isfinite(values)).sum()),
            }
        summary[str(value)] = stats
    return summary


def write_evaluation(rows: list[dict], output: Path) -> str:
    """Write metrics.csv and summary.json; return a printable table."""
    write_rows_csv(output / 'metrics.csv', rows)
    summary = summarise(rows)
    atomic_write_text(output / 'summary.json', json.dumps(summary, indent=2))
    lines = [f'{"case":<28}{"label":>6}' + ''.join(f'{m:>14}' for m in METRIC_NAMES)]
    for row in rows:
        lines.append(f'{row["case"]:<28}{row["label"]:>6}' + ''.join(f'{row[m]:>14.4f}' for m in METRIC_NAMES))
    for value, stats in summary.items():
        means = ''.join(f'{_format(stats[m]["mean"]):>14}' for m in METRIC_NAMES)
        stds = ''.join(f'{_format(stats[m]["std"]):>14}' for m in METRIC_NAMES)
        counts = ''.join(f'{str(stats[m]["count"]) + " of " + str(stats["cases"]):>14}' for m in METRIC_NAMES)
        lines += [f'{"mean":<28}{value:>6}' + means, f'{"std":<28}{value:>6}' + stds, f'{"cases averaged":<28}{value:>6}' + counts]
    return '\n'.join(lines)


def _format(value: float | None) -> str:
    return 'n/a' if value is None else f'{value:.4f}'
