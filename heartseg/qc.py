"""Quality control: how far to trust each predicted mask, from what prediction already computed.

The measures of one case, all in the input's grid unless said otherwise:

* ``tta_agreement``: mean pairwise Dice between the mirrored TTA predictions
  (in the model's grid; NaN with ``--no-tta``);
* ``model_agreement``: mean pairwise Dice between ensemble members (NaN for one model);
* ``confidence``: soft Dice between the probabilities and the mask;
* ``volume_ml`` and ``volume_ratio``, the volume over the training cases' median;
* ``components`` before keep-largest, and ``removed_fraction``, the share of
  the mask it removed;
* ``edge_contact_mm2``: the mask's area on the field of view's most touched face;
* ``intensity_distance``: how far the normalised image's quantiles lie from the
  training cases', in robust standard deviations (the largest over quantiles).

:func:`assess` turns them into ``predicted_dice`` by a linear rule fitted on
degraded LA2018 predictions (``benchmarks/qc_fit.py``; BENCHMARKS.md "Quality
control"), and flags a case when that falls below :data:`FLAG_BELOW` or a
measure is out of its normal range. The checkpoint's ``training_cases`` summary
(:func:`summarise_training_cases`) gives the volume and intensity references;
a checkpoint without one gets every other measure.

Example:
    >>> report = assess({'tta_agreement': 0.97, 'model_agreement': float('nan'), 'confidence': 0.95,
    ...                  'volume_ml': 50.0, 'volume_ratio': 1.1, 'components': 1, 'removed_fraction': 0.0,
    ...                  'edge_contact_mm2': 0.0, 'edge': '', 'intensity_distance': 1.0})
    >>> report.flag, report.reasons
    (False, [])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torchio as tio

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# Every 7th voxel: quantiles of a million voxels are as stable as of all, and torch.quantile caps its input size.
QUANTILE_STRIDE = 7
FACE_NAMES = {'S': 'top', 'I': 'bottom', 'A': 'front', 'P': 'back', 'L': 'left', 'R': 'right'}
OPPOSITE = {'S': 'I', 'I': 'S', 'A': 'P', 'P': 'A', 'L': 'R', 'R': 'L'}

# The rule, fitted by benchmarks/qc_fit.py on half of the degraded LA2018 test set (BENCHMARKS.md "Quality control"):
# least squares of the true Dice on the features. Of the feature sets tried, TTA agreement alone ranked the
# fitting half best (Spearman 0.68; all six features: 0.44), so the other measures only flag, with their reasons.
# Without agreement (--no-tta, one model), fitted on --no-tta predictions, confidence alone (Spearman 0.34; the
# larger sets gained at most 0.06 with coefficients of the wrong sign).
FEATURES = ('disagreement', 'unconfidence', 'volume_change', 'removed_fraction', 'edge_contact', 'intensity_distance')
RULE_WITH_AGREEMENT = {'intercept': 0.9755, 'disagreement': -1.7908}
RULE_WITHOUT_AGREEMENT = {'intercept': 0.9971, 'unconfidence': -1.6992}
# Midway between the fitting half's highest failure (0.854) and its lowest clean case (0.911).
FLAG_BELOW = 0.88
# Without agreement the fitting half's clean cases (0.880 to 0.922) and failures (up to 0.895) overlap:
# 0.02 below the lowest clean case, as FLAG_BELOW is 0.03 below it.
FLAG_BELOW_WITHOUT_AGREEMENT = 0.86
# Normal ranges: the 1st or 99th percentile of the fitting half's masks with true Dice of at least 0.85,
# rounded outwards; the volume range is LA2018's training range (0.42 to 2.7 times the median) widened 1.5 times,
# and the edge area lies between the clean masks' (up to 88 mm²) and the cut fields of view's (500 mm² and more).
AGREEMENT_BELOW = 0.90
CONFIDENCE_BELOW = 0.87
VOLUME_RATIO_RANGE = (0.28, 4.0)
REMOVED_ABOVE = 0.08
EDGE_ABOVE_MM2 = 150.0
INTENSITY_ABOVE = 7.5
INTENSITY_CAP = 20.0  # robust distances beyond this all mean "unlike", and would swamp a linear rule


@dataclass(frozen=True)
class QualityReport:
    """One case's verdict: ``predicted_dice`` in [0, 1], whether to review it, and why."""

    predicted_dice: float
    flag: bool
    reasons: list[str]
    measures: dict[str, float | str]

    def row(self, case_id: str) -> dict:
        """The case's ``qc.csv`` row: case, predicted_dice, flag and reasons, then the measures."""
        return {'case': case_id, 'predicted_dice': round(self.predicted_dice, 4), 'flag': int(self.flag),
                'reasons': '; '.join(self.reasons), **self.measures}


def intensity_quantiles(image: torch.Tensor) -> list[float]:
    """The :data:`QUANTILES` of each channel of a normalised ``(C, X, Y, Z)`` image, channel after channel."""
    levels = torch.tensor(QUANTILES)
    return [float(q) for channel in image.float() for q in torch.quantile(channel.flatten()[::QUANTILE_STRIDE], levels)]


def summarise_training_cases(subjects: Sequence[tio.Subject]) -> dict[str, list]:
    """What QC compares a new case with: each preprocessed training case's foreground volume and intensity quantiles."""
    volumes, quantiles = [], []
    for subject in subjects:
        label = subject['label']
        volumes.append(float((label.data > 0).sum()) * float(np.prod(label.spacing)) / 1000.0)
        quantiles.append(intensity_quantiles(subject['image'].data))
    return {'volumes_ml': volumes, 'intensity_quantiles': quantiles}


def uncertainty_map(probabilities: np.ndarray) -> np.ndarray:
    """Per-voxel entropy in bits of the mean probability over TTA and models, the largest over channels: 0 certain, 1 a coin toss.

    Example:
        >>> uncertainty_map(np.array([[[[0.5, 1.0]]]])).ravel().tolist()
        [1.0, 0.0]
    """
    p = np.clip(probabilities.astype(np.float32), 1e-7, 1 - 1e-7)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.where(entropy < 1e-5, 0.0, entropy).max(axis=0).astype(np.float32)


def mean_pairwise_dice(masks: torch.Tensor) -> float:
    """Mean Dice over all pairs of the boolean masks ``(M, ...)``; NaN for fewer than two masks.

    Example:
        >>> masks = torch.zeros(3, 4, 4, dtype=torch.bool)
        >>> masks[:, :2] = True; masks[2, :] = True
        >>> round(mean_pairwise_dice(masks), 4)  # pairs: 1, 2/3, 2/3
        0.7778
    """
    if masks.shape[0] < 2:
        return math.nan
    union = masks.any(0)
    if not union.any():
        return 1.0
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in torch.nonzero(union).T)
    flat = masks[(slice(None), *box)].reshape(masks.shape[0], -1).float()
    overlaps = flat @ flat.T
    sizes = overlaps.diagonal()
    pairs = torch.triu_indices(len(sizes), len(sizes), offset=1)
    totals = sizes[pairs[0]] + sizes[pairs[1]]
    dices = torch.where(totals > 0, 2 * overlaps[pairs[0], pairs[1]] / totals.clamp_min(1), torch.ones(()))
    return float(dices.mean())


def soft_dice(probabilities: np.ndarray, structure_masks: np.ndarray) -> float:
    """Agreement of the structure probabilities ``(S, ...)`` with the masks ``(S, ...)`` they produced: 1 when every voxel is certain."""
    overlap = float((probabilities * structure_masks).sum())
    total = float(probabilities.sum()) + float(structure_masks.sum())
    return 1.0 if total == 0 else 2 * overlap / total


def edge_contact(mask: np.ndarray, affine: np.ndarray) -> tuple[float, str]:
    """The mask's area in mm² on the face of the field of view it touches most, and that face's anatomical name."""
    spacing = nib.affines.voxel_sizes(affine)
    codes = nib.aff2axcodes(affine)
    best, face = 0.0, ''
    for axis in range(3):
        pixel_mm2 = float(np.prod([s for i, s in enumerate(spacing) if i != axis]))
        for index, code in ((0, OPPOSITE[codes[axis]]), (-1, codes[axis])):
            area = float(np.take(mask, index, axis=axis).astype(bool).sum()) * pixel_mm2
            if area > best:
                best, face = area, FACE_NAMES[code]
    return best, face


def intensity_distance(quantiles: Sequence[float], reference: dict) -> float:
    """The largest robust z-score of the case's intensity quantiles against the training cases'; NaN without a reference."""
    training = np.asarray(reference.get('intensity_quantiles', []), dtype=float)
    if training.ndim != 2 or len(training) < 2 or training.shape[1] != len(quantiles):
        return math.nan
    median = np.median(training, axis=0)
    spread = 1.4826 * np.median(np.abs(training - median), axis=0) + 1e-3
    return float(min(INTENSITY_CAP, np.max(np.abs(np.asarray(quantiles) - median) / spread)))


def volume_ratio(volume_ml: float, reference: dict) -> float:
    volumes = reference.get('volumes_ml') or []
    median = float(np.median(volumes)) if volumes else 0.0
    return volume_ml / median if median > 0 else math.nan


def features(measures: dict) -> dict[str, float]:
    """The rule's inputs: each measure turned so that 0 is a perfect case; a missing reference counts as typical."""
    agreements = [measures[k] for k in ('tta_agreement', 'model_agreement') if not math.isnan(measures[k])]
    ratio = measures['volume_ratio']
    distance = measures['intensity_distance']
    return {
        'disagreement': 1 - float(np.mean(agreements)) if agreements else math.nan,
        'unconfidence': 1 - measures['confidence'],
        'volume_change': abs(math.log(ratio)) if ratio > 0 else (0.0 if math.isnan(ratio) else 5.0),
        'removed_fraction': measures['removed_fraction'],
        'edge_contact': math.log1p(measures['edge_contact_mm2'] / 100),
        'intensity_distance': 0.0 if math.isnan(distance) else distance,
    }


def has_agreement(measures: dict) -> bool:
    """Whether TTA or an ensemble gave an agreement; without one (``--no-tta``, one model) the other rule applies."""
    return not math.isnan(features(measures)['disagreement'])


def predicted_dice(measures: dict) -> float:
    """The fitted linear rule, clipped to [0, 1]."""
    values = features(measures)
    rule = RULE_WITH_AGREEMENT if has_agreement(measures) else RULE_WITHOUT_AGREEMENT
    estimate = rule['intercept'] + sum(rule.get(name, 0.0) * values[name] for name in FEATURES if not math.isnan(values[name]))
    return float(np.clip(estimate, 0.0, 1.0))


def out_of_range(measures: dict) -> list[str]:
    """Short human words for every measure outside its normal range."""
    reasons = []
    if measures['volume_ml'] == 0:
        reasons.append('empty mask')
    for key, name in (('tta_agreement', 'TTA agreement'), ('model_agreement', 'model agreement')):
        if measures[key] < AGREEMENT_BELOW:
            reasons.append(f'{name} {measures[key]:.2f}')
    if measures['confidence'] < CONFIDENCE_BELOW:
        reasons.append(f'confidence {measures["confidence"]:.2f}')
    ratio = measures['volume_ratio']
    if measures['volume_ml'] > 0 and not math.isnan(ratio) and not VOLUME_RATIO_RANGE[0] <= ratio <= VOLUME_RATIO_RANGE[1]:
        reasons.append(f'volume {ratio:.1f}x the training median')
    if measures['removed_fraction'] > REMOVED_ABOVE:
        reasons.append(f'{100 * measures["removed_fraction"]:.0f}% of the mask in stray pieces')
    if measures['edge_contact_mm2'] > EDGE_ABOVE_MM2:
        reasons.append(f'mask touches the {measures["edge"]} edge of the scan')
    if measures['intensity_distance'] > INTENSITY_ABOVE:
        reasons.append('intensities unlike the training scans')
    return reasons


def assess(measures: dict) -> QualityReport:
    """``predicted_dice``, the flag and its reasons for one case's measures."""
    estimate = predicted_dice(measures)
    reasons = out_of_range(measures)
    flag = estimate < (FLAG_BELOW if has_agreement(measures) else FLAG_BELOW_WITHOUT_AGREEMENT) or bool(reasons)
    if flag and not reasons:
        reasons = [f'predicted Dice {estimate:.2f}']
    return QualityReport(estimate, flag, reasons, measures)


def measure(mask: np.ndarray, probabilities: np.ndarray, affine: np.ndarray, structure_masks: np.ndarray,
            signals: dict, reference: dict) -> dict:
    """Every measure of one predicted case.

    Args:
        probabilities, structure_masks: ``(S, ...)``, one per structure (:mod:`heartseg.outputs`).
        signals: From prediction: ``tta_agreement``, ``model_agreement``, ``components``,
            ``removed_voxels`` and ``intensity_quantiles``.
        reference: The checkpoint's ``training_cases`` summary, or ``{}``.
    """
    voxel_ml = float(np.prod(nib.affines.voxel_sizes(affine))) / 1000.0
    kept = int((mask > 0).sum())
    volume = kept * voxel_ml
    contact, face = edge_contact(mask, affine)
    return {
        'tta_agreement': signals['tta_agreement'],
        'model_agreement': signals['model_agreement'],
        'confidence': soft_dice(probabilities, structure_masks),
        'volume_ml': volume,
        'volume_ratio': volume_ratio(volume, reference),
        'components': signals['components'],
        'removed_fraction': signals['removed_voxels'] / max(1, kept + signals['removed_voxels']),
        'edge_contact_mm2': contact,
        'edge': face,
        'intensity_distance': intensity_distance(signals['intensity_quantiles'], reference),
    }
