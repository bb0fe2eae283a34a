"""A dataset as ``dataset.json`` declares it: its cases, labels and channels, in either layout.

The readers (:mod:`heartseg.data.msd`, :mod:`heartseg.data.nnunet_v2`) build a :class:`DatasetSpec`;
a path that ``dataset.json`` gives must stay inside the dataset folder (:func:`resolve_inside`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartseg.errors import UserError
from heartseg.files import canonical_folder
from heartseg.outputs import foreground_values

MAX_LABEL_VALUE = np.iinfo(np.uint8).max


MSD, NNUNET_V2 = 'msd', 'nnunet_v2'


NIFTI_ENDINGS = ('.nii.gz', '.nii')


V2_REQUIRED_KEYS = ('channel_names', 'labels', 'numTraining', 'file_ending')


CHANNEL_SUFFIX = re.compile(r'_(\d{4})')  # nnU-Net's channel suffix of an image file name


@dataclass(frozen=True)
class Case:
    """One training case: an image and, for training data, its label map."""

    case_id: str
    image: Path
    label: Path | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """What ``dataset.json`` declares about a dataset, in either layout.

    ``regions`` are nnU-Net v2's overlapping label sets, each
    ``{'name', 'values', 'paint'}`` (``paint`` from ``regions_class_order``);
    empty for plain labels.
    """

    root: Path
    name: str
    labels: dict[int, str]
    modalities: dict[int, str]
    cases: tuple[Case, ...]
    layout: str = MSD
    test_cases: tuple[Case, ...] = ()
    regions: tuple[dict, ...] = ()

    @property
    def foreground_labels(self) -> list[int]:
        return foreground_values(self.labels)


def case_id_from_path(path: Path) -> str:
    name = path.name
    for suffix in ('.nii.gz', '.nii'):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def folder_case_ids(files: list[Path]) -> list[str]:
    """Case ids of a folder's scans; nnU-Net's channel suffix ``_0000`` is dropped when
    every file has it, as nnU-Net names its outputs.

    Example:
        >>> folder_case_ids([Path('heart_001_0000.nii.gz'), Path('heart_002_0000.nii.gz')])
        ['heart_001', 'heart_002']
    """
    names = [case_id_from_path(path) for path in files]
    channels = [CHANNEL_SUFFIX.fullmatch(name[-5:]) for name in names]
    if all(channels):
        later = next((path for path, match in zip(files, channels) if match.group(1) != '0000'), None)
        if later is not None:
            raise UserError(
                later,
                'a second channel file (nnU-Net naming <case>_0001); '
                'multi-channel nnU-Net v2 inputs are not supported yet',
            )
        return [name[:-5] for name in names]
    return names


def resolve_inside(root: Path, relative: object, json_path: Path, key: str) -> Path:
    if not isinstance(relative, str) or not relative:
        raise UserError(json_path, f'"{key}" must be a non-empty path string, got {relative!r}')
    if os.path.isabs(relative):
        raise UserError(
            json_path, f'absolute path {relative!r} is not allowed; paths must be relative to the dataset folder'
        )
    # Both sides in one spelling: the folder as the OS finds it (any '..', '~' or link in the way the user reached it
    # followed), the entry's text normalised under it. The text must stay inside; the file there may still be a link
    # to elsewhere (a subset of another dataset).
    folder = canonical_folder(root)
    inside = Path(os.path.normpath(folder / relative))
    if not inside.is_relative_to(folder):
        raise UserError(json_path, f'path {relative!r} escapes the dataset folder')
    return inside


def parse_int_keys(mapping: object, json_path: Path, key: str) -> dict[int, str]:
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(json_path, f'"{key}" must be a non-empty object')
    try:
        return {int(value): str(name) for value, name in mapping.items()}
    except ValueError:
        raise UserError(json_path, f'"{key}" keys must be integers, got {list(mapping)}') from None


def check_label_values(values: Collection[int], json_path: Path) -> None:
    if 0 not in values:
        raise UserError(json_path, '"labels" must declare 0 (background)')
    if not all(0 <= value <= MAX_LABEL_VALUE for value in values):
        raise UserError(
            json_path,
            f'"labels" values must be 0 to {MAX_LABEL_VALUE} (label maps are stored as uint8), got {sorted(values)}',
        )
