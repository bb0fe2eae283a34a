"""Quality control: how far to trust each predicted mask, structure by structure, from what prediction already computed.

The measures of one structure of one case, all in the input's grid unless said otherwise:

* ``tta_agreement``: mean pairwise Dice between the mirrored TTA predictions
  (in the model's grid; NaN with ``--no-tta``);
* ``model_agreement``: mean pairwise Dice between ensemble members (NaN for one model);
* ``confidence``: soft Dice between the probabilities and the mask;
* ``volume_ml`` and ``volume_ratio``, the volume over the training cases' median;
* ``components`` before post-processing, and ``removed_fraction``, the share of
  the mask it removed;
* ``edge_contact_mm2``: the mask's area on the field of view's most touched
  face, and ``edge_limit_mm2``, what the training labels make normal there
  (short-axis stacks cut the heart at their first and last slice; LA2018's
  scans hold the whole atrium);
* ``intensity_distance`` (the case's, shared by its structures): how far the
  normalised image's quantiles lie from the training cases', in robust
  standard deviations (the largest over quantiles).

:func:`assess` turns them into a ``predicted_dice`` per structure by a linear
rule, and flags a structure when that falls below its threshold or a measure is
out of its normal range. Its reasons name the structure when there are several
("RV: TTA agreement 0.71"). The case's predicted Dice is the mean over its
structures, and the case is flagged when any structure is. The rule and its
thresholds come from :data:`ONE_STRUCTURE`, fitted on degraded LA2018
predictions, or :data:`SEVERAL_STRUCTURES`, fitted on degraded ACDC
predictions (``benchmarks/qc_fit.py``; BENCHMARKS.md "Quality control"). The
checkpoint's ``training_cases`` summary (:func:`summarise_training_cases`)
gives the volume, edge and intensity references; a checkpoint without one gets
every other measure.

Example:
    >>> measures = {'tta_agreement': 0.97, 'model_agreement': float('nan'), 'confidence': 0.95, 'volume_ml': 50.0,
    ...             'volume_ratio': 1.1, 'components': 1, 'removed_fraction': 0.0, 'edge_contact_mm2': 0.0, 'edge': '',
    ...             'edge_limit_mm2': 150.0, 'intensity_distance': 1.0}
    >>> report = assess({'atrium': measures})
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

from heartseg.outputs import Outputs

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# Every 7th voxel: quantiles of a million voxels are as stable as of all, and torch.quantile caps its input size.
QUANTILE_STRIDE = 7
FACE_NAMES = {'S': 'top', 'I': 'bottom', 'A': 'front', 'P': 'back', 'L': 'left', 'R': 'right'}
OPPOSITE = {'S': 'I', 'I': 'S', 'A': 'P', 'P': 'A', 'L': 'R', 'R': 'L'}

FEATURES = ('disagreement', 'unconfidence', 'volume_change', 'removed_fraction', 'edge_contact', 'intensity_distance')


@dataclass(frozen=True)
class Calibration:
    """A fitted rule and its thresholds, for one structure's measures.

    Args:
        with_agreement, without_agreement: ``{'intercept': a, feature: b, ...}``, least squares of the true Dice
            on :func:`features`; the second for masks without TTA or ensemble agreement (``--no-tta``, one model).
        flag_below, flag_below_without_agreement: A structure whose predicted Dice is below is flagged.
        agreement_below, confidence_below, removed_above: The normal ranges of those measures.
    """

    with_agreement: dict[str, float]
    without_agreement: dict[str, float]
    flag_below: float
    flag_below_without_agreement: float
    agreement_below: float
    confidence_below: float
    removed_above: float


# Fitted by benchmarks/qc_fit.py on half of the degraded LA2018 test set (BENCHMARKS.md "Quality control"): of the
# feature sets tried, TTA agreement alone ranked the fitting half best (Spearman 0.68; all six features: 0.44), so the
# other measures only flag, with their reasons. Without agreement, confidence alone (Spearman 0.34). The flag lies
# midway between the fitting half's highest failure (0.854) and its lowest clean case (0.911); without agreement the
# clean cases (0.880 to 0.922) and failures (up to 0.895) overlap, and it lies 0.02 below the lowest clean case.
# The ranges are the 1st or 99th percentile of the fitting half's masks with
# true Dice of at least 0.85, rounded outwards.
ONE_STRUCTURE = Calibration(
    with_agreement={'intercept': 0.9755, 'disagreement': -1.7908},
    without_agreement={'intercept': 0.9971, 'unconfidence': -1.6992},
    flag_below=0.88,
    flag_below_without_agreement=0.86,
    agreement_below=0.90,
    confidence_below=0.87,
    removed_above=0.08,
)
# Fitted the same way on degraded ACDC predictions (BENCHMARKS.md "Cine MRI on real ACDC"), each of RV, MYO and LV a
# row: 8 patients' 48 volumes (clean, and one frame with bias, cut field of view, motion or noise), predicted by a model
# that never saw them. TTA agreement and confidence together ranked them nearly as well as all six features (Spearman
# 0.900 against 0.907; agreement alone 0.892). A case is flagged when a structure's estimate is below the point midway
# between the highest case with a structure under 0.5 Dice (0.575) and the lowest whose structures all reach 0.80
# (0.589). Without agreement the confidence rule (Spearman 0.890, fitted on the TTA masks' confidence: no --no-tta ACDC
# set was predicted) cannot separate the two (0.656 against 0.451); its flag is midway. The ranges are the 1st or 99th
# percentile of the fitting structures with true Dice of at least 0.85.
SEVERAL_STRUCTURES = Calibration(
    with_agreement={'intercept': 0.9734, 'disagreement': -0.6945, 'unconfidence': -0.5139},
    without_agreement={'intercept': 0.9603, 'unconfidence': -1.3272},
    flag_below=0.58,
    flag_below_without_agreement=0.55,
    agreement_below=0.77,
    confidence_below=0.81,
    removed_above=0.21,
)
# A structure's normal volumes: its training range widened 1.5 times either way; a range about the median flagged
# cine end-systoles, whose LV is that small. Without training volumes: LA2018's (0.42 to 2.7x the median) widened.
VOLUME_WIDENING = 1.5
VOLUME_RATIO_RANGE = (0.28, 4.0)
# The edge area lies between LA2018's clean masks' (up to 88 mm²) and its cut fields of view's (500 mm² and more);
# where the training labels touch a face more (a short-axis stack), 1.5 times their 95th percentile.
EDGE_ABOVE_MM2 = 150.0
EDGE_TRAINING_FACTOR = 1.5
INTENSITY_ABOVE = 7.5
INTENSITY_CAP = 20.0  # robust distances beyond this all mean "unlike", and would swamp a linear rule


@dataclass(frozen=True)
class QualityReport:
    """One case's verdict: ``predicted_dice`` in [0, 1]
    (the mean over its structures), whether to review it, and why."""

    predicted_dice: float
    flag: bool
    reasons: list[str]
    structures: dict[str, dict]  # per structure: its measures, predicted_dice and flag

    def row(self, case_id: str) -> dict:
        """The case's ``qc.csv`` row: case, predicted_dice, flag and reasons, then each structure's columns.

        One structure's columns are its measures; several structures' are prefixed with the structure's name.
        """
        row = {
            'case': case_id,
            'predicted_dice': round(self.predicted_dice, 4),
            'flag': int(self.flag),
            'reasons': '; '.join(self.reasons),
        }
        single = len(self.structures) == 1
        for name, columns in self.structures.items():
            if single:
                row.update({key: value for key, value in columns.items() if key not in ('predicted_dice', 'flag')})
            else:
                row.update(
                    {
                        f'{name} {key}': round(value, 4) if key == 'predicted_dice' else value
                        for key, value in columns.items()
                    }
                )
        return row


def intensity_quantiles(image: torch.Tensor) -> list[float]:
    """The :data:`QUANTILES` of each channel of a normalised ``(C, X, Y, Z)`` image, channel after channel."""
    levels = torch.tensor(QUANTILES)
    return [float(q) for channel in image.float() for q in torch.quantile(channel.flatten()[::QUANTILE_STRIDE], levels)]


def summarise_training_cases(subjects: Sequence[tio.Subject], outputs: Outputs) -> dict[str, list]:
    """What QC compares a new case with:
    each preprocessed training case's volume and edge contact per structure, and its intensity quantiles."""
    volumes, edges, quantiles = [], [], []
    for subject in subjects:
        label = subject['label']
        masks = outputs.structure_masks(label.data[0]).numpy()
        volumes.append([float(mask.sum()) * float(np.prod(label.spacing)) / 1000.0 for mask in masks])
        edges.append([edge_contact(mask, label.affine)[0] for mask in masks])
        quantiles.append(intensity_quantiles(subject['image'].data))
    ids = [subject.get('case_id') for subject in subjects]  # group a patient's frames (cardiac_function)
    summary = {'structure_volumes_ml': volumes, 'structure_edge_contact_mm2': edges, 'intensity_quantiles': quantiles}
    return {'case_ids': ids, **summary} if None not in ids else summary


def training_column(reference: dict, key: str, structure: int, structures: int) -> list[float]:
    """One structure's values of a training summary;
    a checkpoint from before per-structure summaries has only total volumes."""
    rows = reference.get(f'structure_{key}') or []
    if rows:
        return [row[structure] for row in rows]
    return list(reference.get(key) or []) if structures == 1 else []


def uncertainty_map(probabilities: np.ndarray) -> np.ndarray:
    """Per-voxel entropy in bits of the mean probability over TTA and models,
    the largest over channels: 0 certain, 1 a coin toss.

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
    """Agreement of the structure probabilities ``(S, ...)`` with the masks ``(S, ...)`` they produced:
    1 when every voxel is certain."""
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
    """The largest robust z-score of the case's intensity quantiles against
    the training cases'; NaN without a reference."""
    training = np.asarray(reference.get('intensity_quantiles', []), dtype=float)
    if training.ndim != 2 or len(training) < 2 or training.shape[1] != len(quantiles):
        return math.nan
    median = np.median(training, axis=0)
    spread = 1.4826 * np.median(np.abs(training - median), axis=0) + 1e-3
    return float(min(INTENSITY_CAP, np.max(np.abs(np.asarray(quantiles) - median) / spread)))


def volume_ratio(volume_ml: float, training_volumes: list[float]) -> float:
    median = float(np.median(training_volumes)) if training_volumes else 0.0
    return volume_ml / median if median > 0 else math.nan


def volume_ratio_range(training_volumes: list[float]) -> tuple[float, float]:
    """The volume ratios (to the training median) a structure may have: its training cases' lowest and highest,
    widened :data:`VOLUME_WIDENING` times, or :data:`VOLUME_RATIO_RANGE` without training volumes.
    ``volume_ratio_range([30.0, 60.0, 150.0])``, an LV at end-systole and end-diastole, is ``(0.33, 3.75)``."""
    median = float(np.median(training_volumes)) if training_volumes else 0.0
    if median <= 0:
        return VOLUME_RATIO_RANGE
    low, high = min(training_volumes) / median / VOLUME_WIDENING, max(training_volumes) / median * VOLUME_WIDENING
    return round(low, 2), round(high, 2)


def edge_limit(training_contacts: list[float]) -> float:
    """The edge area above which a structure is flagged:
    :data:`EDGE_ABOVE_MM2`, or more where its training labels touch more."""
    return (
        max(EDGE_ABOVE_MM2, EDGE_TRAINING_FACTOR * float(np.percentile(training_contacts, 95)))
        if training_contacts
        else EDGE_ABOVE_MM2
    )


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


def predicted_dice(measures: dict, calibration: Calibration) -> float:
    """The fitted linear rule, clipped to [0, 1]."""
    values = features(measures)
    rule = calibration.with_agreement if has_agreement(measures) else calibration.without_agreement
    estimate = rule['intercept'] + sum(
        rule.get(name, 0.0) * values[name] for name in FEATURES if not math.isnan(values[name])
    )
    return float(np.clip(estimate, 0.0, 1.0))


def out_of_range(measures: dict, calibration: Calibration) -> list[str]:
    """Short human words for every measure of one structure outside its normal range."""
    reasons = []
    if measures['volume_ml'] == 0:
        reasons.append('empty mask')
    for key, name in (('tta_agreement', 'TTA agreement'), ('model_agreement', 'model agreement')):
        if measures[key] < calibration.agreement_below:
            reasons.append(f'{name} {measures[key]:.2f}')
    if measures['confidence'] < calibration.confidence_below:
        reasons.append(f'confidence {measures["confidence"]:.2f}')
    ratio = measures['volume_ratio']
    low, high = (measures.get(f'volume_ratio_{end}', limit) for end, limit in zip(('low', 'high'), VOLUME_RATIO_RANGE))
    if measures['volume_ml'] > 0 and not math.isnan(ratio) and not low <= ratio <= high:
        reasons.append(f'volume {ratio:.1f}x the training median')
    if measures['removed_fraction'] > calibration.removed_above:
        reasons.append(f'{100 * measures["removed_fraction"]:.0f}% of the mask in stray pieces')
    if measures['edge_contact_mm2'] > measures['edge_limit_mm2']:
        reasons.append(f'mask touches the {measures["edge"]} edge of the scan')
    return reasons


def assess(structures: dict[str, dict]) -> QualityReport:
    """The predicted Dice, flag and reasons of each structure's measures, and the case's.

    Intensities are the case's, so an unlike scan is one reason, not one per structure.
    """
    calibration = ONE_STRUCTURE if len(structures) == 1 else SEVERAL_STRUCTURES
    columns, reasons = {}, []
    for name, measures in structures.items():
        estimate = predicted_dice(measures, calibration)
        own = out_of_range(measures, calibration)
        threshold = calibration.flag_below if has_agreement(measures) else calibration.flag_below_without_agreement
        flag = estimate < threshold or bool(own)
        own = own or ([f'predicted Dice {estimate:.2f}'] if flag else [])
        reasons += [f'{name}: {reason}' for reason in own] if len(structures) > 1 else own
        columns[name] = {'predicted_dice': estimate, 'flag': int(flag), **measures}
    distance = next(iter(structures.values()))['intensity_distance']
    if distance > INTENSITY_ABOVE:
        reasons.append('intensities unlike the training scans')
    mean = float(np.mean([c['predicted_dice'] for c in columns.values()]))
    return QualityReport(mean, bool(reasons), reasons, columns)


def measure(
    probabilities: np.ndarray,
    affine: np.ndarray,
    structure_masks: np.ndarray,
    signals: dict,
    reference: dict,
    names: Sequence[str],
) -> dict[str, dict]:
    """Every measure of each structure of one predicted case, by structure name.

    Args:
        probabilities, structure_masks: ``(S, ...)``, one per structure (:mod:`heartseg.outputs`).
        signals: From prediction, one value per structure: ``tta_agreement``, ``model_agreement``,
            ``components``, ``removed_voxels``; and the case's ``intensity_quantiles``.
        reference: The checkpoint's ``training_cases`` summary, or ``{}``.
    """
    voxel_ml = float(np.prod(nib.affines.voxel_sizes(affine))) / 1000.0
    distance = intensity_distance(signals['intensity_quantiles'], reference)
    measures = {}
    for index, name in enumerate(names):
        kept, removed = int(structure_masks[index].sum()), signals['removed_voxels'][index]
        training_volumes = training_column(reference, 'volumes_ml', index, len(names))
        contact, face = edge_contact(structure_masks[index], affine)
        measures[name] = {
            'tta_agreement': signals['tta_agreement'][index],
            'model_agreement': signals['model_agreement'][index],
            'confidence': soft_dice(probabilities[index], structure_masks[index]),
            'volume_ml': kept * voxel_ml,
            'volume_ratio': volume_ratio(kept * voxel_ml, training_volumes),
            'volume_ratio_low': volume_ratio_range(training_volumes)[0],
            'volume_ratio_high': volume_ratio_range(training_volumes)[1],
            'components': signals['components'][index],
            'removed_fraction': removed / max(1, kept + removed),
            'edge_contact_mm2': contact,
            'edge': face,
            'edge_limit_mm2': edge_limit(training_column(reference, 'edge_contact_mm2', index, len(names))),
            'intensity_distance': distance,
        }
    return measures
