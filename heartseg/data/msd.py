"""The MSD layout (Medical Segmentation Decathlon, nnU-Net v1): ``dataset.json`` with ``modality``,
``labels`` keyed by value and a ``training`` list of image/label paths; multi-channel images are 4D files.
"""

from __future__ import annotations

from pathlib import Path

from heartseg.data.cases import (
    V2_REQUIRED_KEYS,
    Case,
    DatasetSpec,
    case_id_from_path,
    check_label_values,
    parse_int_keys,
    resolve_inside,
)
from heartseg.errors import UserError


def read_msd(root: Path, json_path: Path, content: dict, allow_duplicates: bool) -> DatasetSpec:
    for key in ('labels', 'modality', 'training'):
        if key not in content:
            raise UserError(
                json_path,
                f'missing required key "{key}" (an MSD dataset.json; '
                f'nnU-Net v2 ones have {", ".join(V2_REQUIRED_KEYS)})',
            )
    labels = parse_int_keys(content['labels'], json_path, 'labels')
    check_label_values(labels, json_path)
    modalities = parse_int_keys(content['modality'], json_path, 'modality')
    training = content['training']
    if not isinstance(training, list) or not training:
        raise UserError(json_path, '"training" must be a non-empty list')
    cases = []
    seen: set[str] = set()
    for entry in training:
        if not isinstance(entry, dict) or 'image' not in entry or 'label' not in entry:
            raise UserError(json_path, f'each "training" entry needs "image" and "label", got {entry!r}')
        image = resolve_inside(root, entry['image'], json_path, 'image')
        label = resolve_inside(root, entry['label'], json_path, 'label')
        case_id = case_id_from_path(image)
        if case_id in seen and not allow_duplicates:
            raise UserError(json_path, f'case {case_id!r} is listed twice')
        seen.add(case_id)
        cases.append(Case(case_id, image, label))
    return DatasetSpec(
        root=root,
        name=str(content.get('name', root.name)),
        labels=labels,
        modalities=modalities,
        cases=tuple(cases),
        test_cases=msd_test_cases(root, json_path, content),
    )


def msd_test_cases(root: Path, json_path: Path, content: dict) -> tuple[Case, ...]:
    """Test images from ``"test"``, or else every NIfTI file in ``imagesTs/``."""
    listed = content.get('test') or []
    if not isinstance(listed, list):
        raise UserError(json_path, f'"test" must be a list, got {type(listed).__name__}')
    if not listed and (root / 'imagesTs').is_dir():
        listed = sorted(p.relative_to(root).as_posix() for p in (root / 'imagesTs').glob('*.nii*'))
    paths = [entry.get('image') if isinstance(entry, dict) else entry for entry in listed]
    images = [resolve_inside(root, path, json_path, 'test') for path in paths]
    return tuple(Case(case_id_from_path(image), image) for image in images)
