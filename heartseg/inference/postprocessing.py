"""Keeping the largest connected component: which structures get it, applied, and chosen by cross-validation.

As nnU-Net (``determine_postprocessing``), a cross-validation decides it from
its out-of-fold predictions, before post-processing:

1. the largest component of all structures together (every other foreground
   voxel becomes background) is kept if it raises the mean Dice over the
   structures and lowers no structure's;
2. then, structure by structure, each one's own largest component is kept if
   it raises that structure's mean Dice.

Structures are the output's (:class:`heartseg.outputs.Outputs`): label values,
or nnU-Net v2 regions as region masks, so an outer region's stray piece goes
with the inner regions painted inside it, and no hole is punched. The choice
travels with the model in ``crossval.json``; a single model, with no
out-of-fold predictions to choose from, keeps each structure's largest
component (:meth:`Postprocessing.every_structure`).

Example:
    >>> outputs = Outputs('softmax', ((1,), (2,)))
    >>> mask = np.zeros((1, 1, 9), np.uint8); mask[0, 0, [0, 1, 4, 5, 8]] = [1, 1, 2, 2, 1]
    >>> Postprocessing(all_foreground=False, structures=(0,)).apply(mask, outputs).ravel().tolist()
    [1, 1, 0, 0, 2, 2, 0, 0, 0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from heartseg.metrics import dice
from heartseg.outputs import Outputs

CONNECTIVITY = np.ones((3, 3, 3))  # 26-connected, as nnU-Net's skimage label with full connectivity


@dataclass(frozen=True)
class Postprocessing:
    """Which largest components a mask keeps.

    Args:
        all_foreground: Keep the largest component of the union of all structures.
        structures: Indices into ``Outputs.structures`` whose own largest component is kept.
    """

    all_foreground: bool
    structures: tuple[int, ...]

    @classmethod
    def every_structure(cls, outputs: Outputs) -> Postprocessing:
        """The default of a model with no cross-validation: each structure's largest component."""
        return cls(False, tuple(range(len(outputs.structures))))

    @classmethod
    def none(cls) -> Postprocessing:
        return cls(False, ())

    @classmethod
    def from_dict(cls, values: dict) -> Postprocessing:
        return cls(bool(values['all_foreground']), tuple(int(s) for s in values['structures']))

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, outputs: Outputs) -> str:
        kept = [outputs.names[index] for index in self.structures]
        steps = (['all structures together'] if self.all_foreground else []) + kept
        return 'keeps the largest component of ' + ', '.join(steps) if steps else 'keeps every component'

    def apply(self, mask: np.ndarray, outputs: Outputs) -> np.ndarray:
        """The label map with only the kept components; removed voxels become background."""
        result = mask.copy()
        if self.all_foreground:
            result[~largest_component(mask > 0)] = 0
        for index in self.structures:
            structure = outputs.structure_masks(torch.from_numpy(result)).numpy()[index]
            result[structure & ~largest_component(structure)] = 0
        return result


def component_counts(mask: np.ndarray, outputs: Outputs) -> list[int]:
    """The 26-connected components of each structure of a label map."""
    return [
        int(ndimage.label(structure, structure=CONNECTIVITY)[1])
        for structure in outputs.structure_masks(torch.from_numpy(mask)).numpy()
    ]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (the mask itself if it has one or none)."""
    components, count = ndimage.label(mask, structure=CONNECTIVITY)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())[1:]
    return components == 1 + int(np.argmax(sizes))


def choose(
    cases: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], outputs: Outputs
) -> tuple[Postprocessing, dict]:
    """nnU-Net's choice from out-of-fold ``(mask, reference)`` pairs, and the mean Dice per structure that made it.

    ``cases`` is called once per step, so the masks need not all fit in memory.
    Returns the post-processing and ``{'before': [...], 'after': [...]}``, the
    mean Dice per structure without post-processing and with the chosen one.
    """
    none = Postprocessing.none()
    before = mean_dice(cases, outputs, none)
    chosen, current = none, before
    union = mean_dice(cases, outputs, Postprocessing(True, ()))
    if np.mean(union) > np.mean(current) and all(u >= c for u, c in zip(union, current)):
        chosen, current = Postprocessing(True, ()), union
    if len(outputs.structures) > 1:  # with one structure, step 1 was that structure's own largest component
        for index in range(len(outputs.structures)):
            candidate = Postprocessing(chosen.all_foreground, (*chosen.structures, index))
            scores = mean_dice(cases, outputs, candidate)
            if scores[index] > current[index]:
                chosen, current = candidate, scores
    return chosen, {'before': before, 'after': current}


def mean_dice(
    cases: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], outputs: Outputs, postprocessing: Postprocessing
) -> list[float]:
    """Mean Dice per structure over the cases, each mask post-processed; a structure absent from both counts as 1."""
    totals, count = np.zeros(len(outputs.structures)), 0
    for mask, reference in cases():
        predicted = outputs.structure_masks(torch.from_numpy(postprocessing.apply(mask, outputs))).numpy()
        expected = outputs.structure_masks(torch.from_numpy(reference)).numpy()
        totals += [dice(p, e) for p, e in zip(predicted, expected)]
        count += 1
    return (totals / max(count, 1)).tolist()
