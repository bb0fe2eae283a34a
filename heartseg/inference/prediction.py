"""A trained model, or an ensemble of them, predicting masks in each scan's exact grid; evaluation.

``predict.py`` and the cross-validation scoring (``heartseg.run.crossval``) both predict
through :class:`Predictor`, so their masks and numbers are computed the same
way. Every mask has the input's shape and affine; the checkpoint carries the
architecture, spacing, normalisation, patch size and label values.

Example:
    >>> predictor = Predictor([Path('runs/cv/fold_0/best.pt'), Path('runs/cv/fold_1/best.pt')])  # doctest: +SKIP
    >>> mask, probabilities, nifti = predictor.predict(Path('scan.nii.gz'))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from heartseg.checkpoint import ModelPlan, load_checkpoint
from heartseg.data.cases import case_id_from_path
from heartseg.data.reading import image_subject, load_nifti, read_label
from heartseg.data.validation import CaseCheck
from heartseg.devices import mixed_precision_dtype, select_device
from heartseg.distributed import local_device
from heartseg.errors import UserError
from heartseg.files import atomic_write_text, write_rows_csv
from heartseg.inference.export import Network, is_exported, load_exported
from heartseg.inference.postprocessing import Postprocessing, component_counts
from heartseg.inference.sliding_window import DEFAULT_BLENDING, DEFAULT_WINDOW_BATCH, mirrored_logits
from heartseg.metrics import case_metrics
from heartseg.outputs import Outputs
from heartseg.planning.config import DEFAULT_OVERLAP
from heartseg.planning.plan import dummy_2d_axis
from heartseg.preprocessing.preprocessing import Preprocessing
from heartseg.quality.qc import intensity_quantiles, mean_pairwise_dice
from mymodel import UNet3D

METRIC_NAMES = ('dice', 'iou', 'hd95_mm', 'asd_mm', 'predicted_ml', 'reference_ml')


# Mirroring TTA is on by default, as in nnU-Net: on LA2018 it adds 0.003 to 0.006 Dice for
# 7 times the prediction time (BENCHMARKS.md); --no-tta is the fast path.
MIRRORING_TTA = True
# Which flips TTA averages: 'all' 8 (nnU-Net), or 'in-plane': a thick-slice plan's 4 flips of its slice plane.
# In plane is the default: on ACDC validation patients the 4 flips scored as the 8 (-0.0003 +- 0.0016 Dice)
# in half the time (BENCHMARKS.md, Dice per CPU minute); a 3D plan flips every axis either way.
TTA_MIRRORINGS = ('all', 'in-plane')
TTA_MIRRORING = 'in-plane'


@dataclass(frozen=True)
class LoadedCase:
    """A scan read and preprocessed for each model: what a background worker prepares while the last case predicts."""

    path: Path
    nifti: nib.Nifti1Image
    preprocessed: dict[Preprocessing, tio.Subject]


@dataclass(frozen=True)
class Prediction:
    """A mask and probabilities ``(C, X, Y, Z)`` in the input's grid,
    and what :mod:`heartseg.quality.qc` measures from prediction."""

    mask: np.ndarray
    probabilities: np.ndarray
    nifti: nib.Nifti1Image
    signals: dict


@dataclass(frozen=True)
class TrainedModel:
    """One model's network, with the preprocessing and patch size it was trained with."""

    checkpoint: Path
    network: Network
    preprocessing: Preprocessing
    patch_size: tuple[int, int, int]
    labels: dict[str, str]
    outputs: Outputs
    channels: int
    training_cases: dict  # heartseg.quality.qc.summarise_training_cases at training; empty for older checkpoints
    thick_axis: int | None  # the slice axis of a thick-slice plan, augmented in 2D (dummy_2d_axis); None for 3D

    def mirror_axes(self, mirroring: str) -> tuple[int, ...]:
        """The axes TTA flips: all three, or with ``'in-plane'`` those of a thick-slice plan's slice plane."""
        assert mirroring in TTA_MIRRORINGS, f'mirroring must be one of {TTA_MIRRORINGS}, got {mirroring!r}'
        if mirroring == 'in-plane' and self.thick_axis is not None:
            return tuple(axis for axis in range(3) if axis != self.thick_axis)
        return (0, 1, 2)


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
        outputs=plan.outputs,
        channels=plan.channels,
        training_cases=plan.training_cases,
        thick_axis=dummy_2d_axis(plan.target_spacing, plan.patch_size),
    )


def check_ensemble(models: list[TrainedModel]) -> None:
    """Models can be averaged only when they agree on the labels, the outputs and the input channels."""
    first = models[0]
    for other in models[1:]:
        for what, ours, theirs in (
            ('labels', first.labels, other.labels),
            ('outputs', first.outputs, other.outputs),
            ('input channels', first.channels, other.channels),
        ):
            if ours != theirs:
                raise UserError(
                    other.checkpoint,
                    f"its {what} {theirs} differ from {first.checkpoint}'s {ours}; "
                    'an ensemble needs the same labels, outputs and input channels',
                )


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

    def __init__(
        self,
        checkpoints: Path | Sequence[Path],
        device: str = 'auto',
        batch_size: int = DEFAULT_WINDOW_BATCH,
        overlap: float = DEFAULT_OVERLAP,
        blending: str = DEFAULT_BLENDING,
        tta: bool = MIRRORING_TTA,
        postprocessing: Postprocessing | None = None,
        tta_mirroring: str = TTA_MIRRORING,
    ):
        self.device = local_device(select_device(device))  # under torchrun, this process's own GPU
        paths = [checkpoints] if isinstance(checkpoints, Path) else list(checkpoints)
        self.models = [load_trained_model(path, self.device) for path in paths]
        check_ensemble(self.models)
        self.labels = self.models[0].labels
        self.outputs = self.models[0].outputs
        self.channels = self.models[0].channels
        self.training_cases = self.models[0].training_cases
        self.window_options = {
            'overlap': overlap,
            'batch_size': batch_size,
            'blending': blending,
            'device': self.device,
            'amp_dtype': mixed_precision_dtype(self.device),
        }
        self.tta = tta
        self.tta_mirroring = tta_mirroring
        self.postprocessing = postprocessing or Postprocessing.every_structure(self.outputs)

    def load(self, path: Path) -> LoadedCase:
        """Read a scan and preprocess it as each model was trained (once per distinct preprocessing)."""
        nifti = load_nifti(path)
        preprocessed: dict[Preprocessing, tio.Subject] = {}  # folds of one run share their preprocessing
        for model in self.models:
            if model.preprocessing not in preprocessed:
                preprocessed[model.preprocessing] = model.preprocessing(image_subject(path, nifti, self.channels))
        return LoadedCase(path, nifti, preprocessed)

    def model_logits(self, model: TrainedModel, image: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """One model's (TTA-averaged) logits in its own grid,
        and per structure the agreement of its mirrored predictions."""
        total, masks = None, []
        axes = model.mirror_axes(self.tta_mirroring) if self.tta else ()
        for logits in mirrored_logits(model.network, image, model.patch_size, axes, **self.window_options):
            total = logits if total is None else total + logits
            masks.append(self.outputs.logit_masks(logits))
        return total / len(masks), agreement_per_structure(torch.stack(masks))

    def input_grid_logits(self, model: TrainedModel, case: LoadedCase) -> tuple[torch.Tensor, list[float]]:
        """One model's logits ``(C, X, Y, Z)`` resampled linearly onto the input's voxel grid,
        and its TTA agreement per structure."""
        image = case.preprocessed[model.preprocessing]['image']
        logits, agreement = self.model_logits(model, image.data)
        return back_to_input_grid(logits, image.affine, case.nifti), agreement

    def predict_loaded(self, case: LoadedCase) -> Prediction:
        """Predict a loaded case: the ensemble's probabilities and mask in the input grid,
        and the signals QC reads, per structure."""
        mean, tta_agreements, member_masks = MeanProbability(self.outputs), [], []
        for model in self.models:
            logits, agreement = self.input_grid_logits(model, case)
            mean.add(logits)
            tta_agreements.append(agreement)
            member_masks.append(self.outputs.logit_masks(logits))
        mask, components, removed_voxels = self.mask_and_components(mean.value)
        signals = {
            'tta_agreement': np.mean(tta_agreements, axis=0).tolist(),
            'model_agreement': agreement_per_structure(torch.stack(member_masks)),
            'components': components,
            'removed_voxels': removed_voxels,
            'intensity_quantiles': intensity_quantiles(case.preprocessed[self.models[0].preprocessing]['image'].data),
        }
        return Prediction(mask, self.outputs.structure_probabilities(mean.value).numpy(), case.nifti, signals)

    def predict(self, path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
        """Return the uint8 mask and per-structure probabilities in the input's grid, and the input."""
        prediction = self.predict_loaded(self.load(path))
        return prediction.mask, prediction.probabilities, prediction.nifti

    def mask(self, probabilities: torch.Tensor) -> np.ndarray:
        """The label map of the output probabilities ``(C, ...)``, post-processed."""
        return self.postprocessing.apply(self.outputs.label_map(probabilities).numpy(), self.outputs)

    def mask_and_components(self, probabilities: torch.Tensor) -> tuple[np.ndarray, list[int], list[int]]:
        """The mask, and per structure its connected components before post-processing and the voxels that removed."""
        thresholded = self.outputs.label_map(probabilities).numpy()
        mask = self.postprocessing.apply(thresholded, self.outputs)
        before, after = (
            self.outputs.structure_masks(torch.from_numpy(m)).flatten(1).sum(1) for m in (thresholded, mask)
        )
        return mask, component_counts(thresholded, self.outputs), (before - after).tolist()


def agreement_per_structure(masks: torch.Tensor) -> list[float]:
    """Mean pairwise Dice of the boolean masks ``(M, S, ...)``, structure by structure (NaN each for one mask)."""
    return [mean_pairwise_dice(masks[:, structure]) for structure in range(masks.shape[1])]


class MeanProbability:
    """The models' mean probability (nnU-Net's ensembling), added model by model; one model's is its sigmoid or softmax.

    The logits are resampled to the input grid before the sigmoid or softmax, as in nnU-Net:
    a probability saturates within a voxel of the boundary, so interpolating it
    puts the 0.5 crossing halfway between voxel centres, while the logits' zero
    crossing keeps the boundary's sub-voxel position.
    """

    def __init__(self, outputs: Outputs):
        self.outputs, self.total, self.count = outputs, None, 0

    def add(self, input_grid_logits: torch.Tensor) -> None:
        probabilities = self.outputs.probabilities(input_grid_logits)
        self.total = probabilities if self.total is None else self.total.add_(probabilities)
        self.count += 1

    @property
    def value(self) -> torch.Tensor:
        return self.total / self.count


def ensemble_probabilities(input_grid_logits: Iterable[torch.Tensor], outputs: Outputs) -> torch.Tensor:
    """The mean probability of every model's input-grid logits (:class:`MeanProbability`)."""
    mean = MeanProbability(outputs)
    for logits in input_grid_logits:
        mean.add(logits)
    return mean.value


def back_to_input_grid(volume: torch.Tensor, affine: np.ndarray, nifti: nib.Nifti1Image) -> torch.Tensor:
    """Resample a ``(C, X, Y, Z)`` volume in the grid ``affine`` linearly onto the input's voxel grid.

    The preprocessed grid, ``floor(size x spacing / target)`` voxels centred in
    the scan, usually stops short of the input's outermost voxel centres. There
    the volume's nearest values are taken (:func:`replicate_to_cover`), never the
    resampler's fill value: a logit of 0 would be a probability of 0.5 (1/C in a
    softmax) along whole faces of the scan.
    """
    padded, padded_affine = replicate_to_cover(volume, affine, nifti.shape[:3], nifti.affine)
    image = tio.ScalarImage(tensor=padded, affine=padded_affine)
    return tio.Resample((nifti.shape[:3], nifti.affine), image_interpolation='linear')(image).data


def replicate_to_cover(
    volume: torch.Tensor, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray
) -> tuple[torch.Tensor, np.ndarray]:
    """``volume`` padded by repeating its edge voxels until its voxel centres enclose
    those of the grid ``(shape, target_affine)``.

    Each target corner's centre ``c`` lies at ``inv(affine) @ target_affine @ c`` in
    the volume's voxel indices; every face is padded by the whole voxels it lacks.
    Returns the padded volume and its affine (the origin moved by the low padding).
    """
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape], indexing='ij')).reshape(3, -1)
    indices = (np.linalg.inv(affine) @ target_affine @ np.vstack([corners, np.ones(corners.shape[1])]))[:3]
    slack = 1e-3  # float rounding of a corner that sits exactly on the outermost centre
    low = np.maximum(0, np.ceil(-indices.min(axis=1) - slack)).astype(int)
    high = np.maximum(0, np.ceil(indices.max(axis=1) - (np.array(volume.shape[1:]) - 1) - slack)).astype(int)
    if not (low.any() or high.any()):
        return volume, affine
    padding = [int(n) for axis in (2, 1, 0) for n in (low[axis], high[axis])]  # F.pad lists the last axis first
    padded = torch.nn.functional.pad(volume[None].float(), padding, mode='replicate')[0]
    shift = np.eye(4)
    shift[:3, 3] = -low
    return padded, affine @ shift


def evaluate_case(
    case_id: str, mask: np.ndarray, nifti: nib.Nifti1Image, label_path: Path, outputs: Outputs, image_path: Path
) -> list[dict]:
    """Per-structure metrics of one predicted mask against its reference label file."""
    return score_case(case_id, mask, read_reference(label_path, nifti, outputs, image_path), nifti, outputs)


def read_reference(label_path: Path, nifti: nib.Nifti1Image, outputs: Outputs, image_path: Path) -> np.ndarray:
    """A reference label map, checked to lie in the scan's grid and to hold only the model's label values."""
    label_nifti = load_nifti(label_path)
    CaseCheck(case_id_from_path(image_path), strict=True).same_grid(image_path, nifti, label_path, label_nifti)
    return read_label(label_path, label_nifti, [0, *outputs.foreground_labels])[0]


def score_case(
    case_id: str, mask: np.ndarray, reference: np.ndarray, nifti: nib.Nifti1Image, outputs: Outputs
) -> list[dict]:
    """Per-structure metrics of one predicted label map against its reference, both in the grid of ``nifti``.

    A structure is scored as :class:`Outputs` defines it: a label value, or a
    region's mask (every value the region covers), as nnU-Net evaluates regions.
    """
    spacing = tuple(float(z) for z in nib.affines.voxel_sizes(nifti.affine))  # the mask's grid is the affine's
    predicted = outputs.structure_masks(torch.from_numpy(mask)).numpy()
    expected = outputs.structure_masks(torch.from_numpy(reference)).numpy()
    return [
        {'case': case_id, 'label': value, 'name': name, **case_metrics(p, e, spacing)}
        for value, name, p, e in zip(outputs.paint_values, outputs.names, predicted, expected)
    ]


def summarise(rows: list[dict]) -> dict:
    """Mean, std and median of every metric per label; NaN distances are counted, not averaged."""
    summary = {}
    for value in sorted({row['label'] for row in rows}):
        label_rows = [row for row in rows if row['label'] == value]
        stats = {'name': label_rows[0]['name'], 'cases': len(label_rows)}
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


def write_evaluation(rows: list[dict], output: Path, extra: dict | None = None) -> str:
    """Write metrics.csv and summary.json (plus ``extra``'s keys); return a printable table."""
    write_rows_csv(output / 'metrics.csv', rows)
    per_label = summarise(rows)
    summary = {**per_label, **(extra or {})}
    atomic_write_text(output / 'summary.json', json.dumps(summary, indent=2))
    lines = [f'{"case":<28}{"label":>6}' + ''.join(f'{m:>14}' for m in METRIC_NAMES)]
    for row in rows:
        lines.append(f'{row["case"]:<28}{row["label"]:>6}' + ''.join(f'{row[m]:>14.4f}' for m in METRIC_NAMES))
    for value, stats in per_label.items():
        means = ''.join(f'{_format(stats[m]["mean"]):>14}' for m in METRIC_NAMES)
        stds = ''.join(f'{_format(stats[m]["std"]):>14}' for m in METRIC_NAMES)
        counts = ''.join(f'{str(stats[m]["count"]) + " of " + str(stats["cases"]):>14}' for m in METRIC_NAMES)
        lines += [
            f'{"mean":<28}{value:>6}' + means,
            f'{"std":<28}{value:>6}' + stds,
            f'{"cases averaged":<28}{value:>6}' + counts,
        ]
    return '\n'.join(lines)


def _format(value: float | None) -> str:
    return 'n/a' if value is None else f'{value:.4f}'
