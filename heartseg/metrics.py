"""Segmentation metrics: overlap, surface distances in millimetres, volumes.

One implementation serves validation during training and evaluation after
prediction.

Edge cases, as in the Metrics Reloaded recommendations:
    * both masks empty: Dice and IoU are 1, distances are 0;
    * exactly one mask empty: Dice and IoU are 0, distances are NaN
      (undefined; they are left out of means and counted separately).

Example:
    >>> import numpy as np
    >>> a = np.zeros((4, 4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4, 4), bool); b[1:3] = True
    >>> dice(a, b)
    0.5
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2 * int(np.logical_and(prediction, reference).sum()) / total


def iou(prediction: np.ndarray, reference: np.ndarray) -> float:
    union = int(np.logical_or(prediction, reference).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(prediction, reference).sum()) / union


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def surface_distances(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the other's surface."""
    prediction_surface = _surface(prediction)
    reference_surface = _surface(reference)
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=spacing)
    to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=spacing)
    return to_reference[prediction_surface], to_prediction[reference_surface]


def _distance_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    if not prediction.any() and not reference.any():
        return 0.0, 0.0
    if not prediction.any() or not reference.any():
        return float('nan'), float('nan')
    # MedPy 0.5's definitions: both measures pool the surface distances of the two directions.
    # (MedPy before 0.5 averaged the two directed means for ASD instead; the two differ
    # when the surfaces differ in size, by up to 0.03 mm on LA2018 predictions.)
    distances = np.concatenate(surface_distances(prediction, reference, spacing))
    return float(np.percentile(distances, 95)), float(distances.mean())


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile of the symmetric surface distances, in mm."""
    return _distance_metrics(prediction, reference, spacing)[0]


def volume_ml(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    return float(mask.sum()) * float(np.prod(spacing)) / 1000.0


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """All metrics for one binary mask pair."""
    prediction = prediction.astype(bool)
    reference = reference.astype(bool)
    distance_95, average_distance = _distance_metrics(prediction, reference, spacing)
    return {
        'dice': dice(prediction, reference),
        'iou': iou(prediction, reference),
        'hd95_mm': distance_95,
        'asd_mm': average_distance,
        'predicted_ml': volume_ml(prediction, spacing),
        'reference_ml': volume_ml(reference, spacing),
    }
