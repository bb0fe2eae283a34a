"""What the network's output channels mean: the one owner of sigmoid versus softmax.

Two kinds of output, as in nnU-Net:

- ``softmax``: one channel for background plus one per structure, for
  mutually exclusive structures (a label map with several foreground values:
  LV, RV, myocardium). Trained with cross-entropy plus soft Dice over the
  structures; a voxel takes the arg max.
- ``sigmoid``: one independent channel per structure. Right for one
  structure, and for nnU-Net v2 *regions*, overlapping sets of label values
  (BraTS's whole tumour ⊃ tumour core ⊃ enhancing tumour). A voxel is inside
  a channel's structure where its probability exceeds 0.5; regions are then
  painted in order, later ones over earlier ones.

Every part of the pipeline that turns labels into targets, logits into
probabilities, or probabilities into a label map asks :class:`Outputs`.

Example:
    >>> outputs = Outputs('softmax', structures=((1,), (2,), (3,)))
    >>> outputs.channels
    4
    >>> label = torch.tensor([[[[0, 1, 2, 3]]]], dtype=torch.uint8)
    >>> outputs.label_map(outputs.probabilities(outputs.target(label) * 10)).flatten().tolist()
    [0, 1, 2, 3]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

KINDS = ('sigmoid', 'softmax')
# A run config written before the kind was recorded trained sigmoid channels.
LEGACY_KIND = 'sigmoid'


@dataclass(frozen=True)
class Outputs:
    """The network's output channels.

    Args:
        kind: ``'sigmoid'`` or ``'softmax'``.
        structures: Per structure, the label values it covers: one value each
            for plain labels, several for a region.
        paint_values: The label value painted for each structure in the
            predicted label map (nnU-Net's ``regions_class_order``). Defaults
            to each structure's only value.
        names: Each structure's name (a label's or a region's), for scores and reports.
    """

    kind: str
    structures: tuple[tuple[int, ...], ...]
    paint_values: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    def __post_init__(self):
        assert self.kind in KINDS, f'output kind must be one of {KINDS}, got {self.kind!r}'
        assert self.structures, 'at least one structure is needed'
        if not self.paint_values:
            assert all(len(values) == 1 for values in self.structures), f'regions {self.structures} need paint values'
            object.__setattr__(self, 'paint_values', tuple(values[0] for values in self.structures))
        assert len(self.paint_values) == len(self.structures), (
            f'{len(self.structures)} structures need as many paint values, got {self.paint_values}'
        )
        if not self.names:
            object.__setattr__(self, 'names', tuple(f'label {value}' for value in self.paint_values))
        overlapping = len({v for values in self.structures for v in values}) < sum(map(len, self.structures))
        assert not (self.kind == 'softmax' and overlapping), (
            f'softmax needs mutually exclusive structures, got {self.structures}'
        )

    @classmethod
    def one_per_label(cls, kind: str, label_values: Sequence[int], names: Sequence[str] = ()) -> Outputs:
        """One structure per foreground label value (no regions)."""
        return cls(kind, tuple((value,) for value in label_values), names=tuple(names))

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        """Every label value some structure covers (nnU-Net's ``LabelManager.foreground_labels``)."""
        return tuple(sorted({value for values in self.structures for value in values}))

    @property
    def channels(self) -> int:
        """Output channels of the network: softmax adds one for background."""
        return len(self.structures) + (self.kind == 'softmax')

    @property
    def first_structure_channel(self) -> int:
        return 1 if self.kind == 'softmax' else 0

    def probabilities(self, logits: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Logits → probabilities along the channel axis ``dim``."""
        return torch.softmax(logits.float(), dim) if self.kind == 'softmax' else torch.sigmoid(logits.float())

    def structure_probabilities(self, probabilities: torch.Tensor) -> torch.Tensor:
        """``(C, ...)`` probabilities → ``(S, ...)``, one per structure (softmax drops the background channel)."""
        return probabilities[self.first_structure_channel :]

    def target(self, label: torch.Tensor) -> torch.Tensor:
        """``(1, X, Y, Z)`` label map → ``(C, X, Y, Z)`` float target of the output channels."""
        masks = self.structure_masks(label[0])
        if self.kind == 'softmax':
            masks = torch.cat([~masks.any(0, keepdim=True), masks])
        return masks.float()

    def structure_masks(self, label_map: torch.Tensor) -> torch.Tensor:
        """``(X, Y, Z)`` label map → ``(S, X, Y, Z)`` boolean, one mask per structure."""
        return torch.stack(
            [torch.isin(label_map, torch.tensor(values, dtype=label_map.dtype)) for values in self.structures]
        )

    def label_map(self, probabilities: torch.Tensor) -> torch.Tensor:
        """``(C, ...)`` probabilities → uint8 label map of label values."""
        values = torch.tensor(self.paint_values, dtype=torch.uint8)
        if self.kind == 'softmax':
            best = probabilities.argmax(dim=0)
            return torch.where(best > 0, values[(best - 1).clamp_min(0)], torch.zeros((), dtype=torch.uint8))
        if self.is_regions:
            painted = torch.zeros(probabilities.shape[1:], dtype=torch.uint8)
            for channel, value in enumerate(self.paint_values):
                painted[probabilities[channel] > 0.5] = value
            return painted
        # Plain sigmoid labels: the most probable structure, where it is more likely than not.
        best_probability, best_channel = probabilities.max(dim=0)
        return torch.where(best_probability > 0.5, values[best_channel], torch.zeros((), dtype=torch.uint8))

    def logit_masks(self, logits: torch.Tensor) -> torch.Tensor:
        """``(C, ...)`` logits → ``(S, ...)`` boolean structure masks, without computing probabilities."""
        if self.kind == 'softmax':
            best = logits.argmax(dim=0)
            return torch.stack([best == channel for channel in range(1, self.channels)])
        return logits > 0

    @property
    def is_regions(self) -> bool:
        return any(len(values) > 1 for values in self.structures)

    def initial_bias(self, prior: float) -> torch.Tensor:
        """Head biases that start every structure at probability about ``prior`` (RetinaNet's trick)."""
        bias = torch.full((self.channels,), math.log(prior / (1 - prior)))
        if self.kind == 'softmax':
            bias[0] = 0.0  # exp(0) against exp(log-odds) per structure: each starts near ``prior``
        return bias


def planned_kind(structures: Sequence[Sequence[int]]) -> str:
    """The default: softmax for several mutually exclusive structures, sigmoid for one or for regions."""
    regions = any(len(values) > 1 for values in structures)
    return 'softmax' if len(structures) > 1 and not regions else 'sigmoid'


def planned_outputs(kind: str, labels: Mapping[str, str], regions: Sequence[Mapping[str, Any]]) -> Outputs:
    """The outputs of a planned kind: one per region (nnU-Net v2's ``{'name', 'values', 'paint'}``), or per label."""
    if regions:
        return Outputs(
            kind,
            tuple(tuple(r['values']) for r in regions),
            tuple(r['paint'] for r in regions),
            tuple(r['name'] for r in regions),
        )
    values = foreground_values(labels)
    return Outputs.one_per_label(kind, values, [labels[str(v)] for v in values])


def foreground_values(labels: Iterable[int | str]) -> list[int]:
    """The label values other than background (0), sorted, of a dataset's labels (keyed by value, int or str).

    Without regions these are the outputs' structures, so :attr:`Outputs.foreground_labels` gives them again;
    only a dataset, before its outputs are planned, asks this function.
    """
    return sorted(int(value) for value in labels if int(value) != 0)
