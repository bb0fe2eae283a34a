"""The nnU-Net v2 raw layout: ``dataset.json`` with ``channel_names``, ``labels`` as ``{name: value}``
(a list of values is a region), ``numTraining`` and ``file_ending``; ``imagesTr/<case>_0000<ending>`` and
``labelsTr/<case><ending>``; test scans in ``imagesTs/``.
"""

from __future__ import annotations

from pathlib import Path

from heartseg.data.cases import (
    NIFTI_ENDINGS,
    NNUNET_V2,
    V2_REQUIRED_KEYS,
    Case,
    DatasetSpec,
    check_label_values,
    parse_int_keys,
)
from heartseg.errors import UserError
from heartseg.files import canonical_folder


def read_nnunet_v2(root: Path, json_path: Path, content: dict) -> DatasetSpec:
    """An nnU-Net v2 raw dataset: cases found in ``imagesTr/`` by their ``_0000`` channel file."""
    for key in V2_REQUIRED_KEYS:
        if key not in content:
            raise UserError(
                json_path,
                f'missing required key "{key}" (an nnU-Net v2 dataset.json needs {", ".join(V2_REQUIRED_KEYS)})',
            )
    if 'dataset' in content:
        raise UserError(
            json_path,
            '"dataset" (cases listed with their own paths) is not supported; keep the files in imagesTr/ and labelsTr/',
        )
    ending = content['file_ending']
    if ending not in NIFTI_ENDINGS:
        raise UserError(
            json_path, f'"file_ending" {ending!r} is not supported; only NIfTI ({" or ".join(NIFTI_ENDINGS)}) is read'
        )
    modalities = parse_int_keys(content['channel_names'], json_path, 'channel_names')
    if sorted(modalities) != list(range(len(modalities))):
        raise UserError(json_path, f'"channel_names" keys must be 0..{len(modalities) - 1}, got {sorted(modalities)}')
    if len(modalities) > 1:
        raise UserError(
            json_path,
            f'"channel_names" declares {len(modalities)} channels; multi-channel nnU-Net v2 datasets '
            '(one file per channel) are not supported yet, single-channel ones and MSD 4D files are',
        )
    labels, regions = parse_v2_labels(content, json_path)
    cases = v2_cases(root, 'imagesTr', ending, json_path, with_labels=True)
    declared = content['numTraining']
    if not isinstance(declared, int) or declared != len(cases):
        raise UserError(
            json_path,
            f'"numTraining" is {declared!r} but {root / "imagesTr"} holds {len(cases)} cases (<case>_0000{ending})',
        )
    return DatasetSpec(
        root=root,
        name=str(content.get('name', root.name)),
        labels=labels,
        modalities=modalities,
        cases=cases,
        layout=NNUNET_V2,
        test_cases=v2_cases(root, 'imagesTs', ending, json_path, with_labels=False)
        if (root / 'imagesTs').is_dir()
        else (),
        regions=regions,
    )


def parse_v2_labels(content: dict, json_path: Path) -> tuple[dict[int, str], tuple[dict, ...]]:
    """``{name: value or [values]}`` → labels by value, and the regions (with their paint order) if any."""
    mapping = content['labels']
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(json_path, '"labels" must be a non-empty object of {name: value}')
    parsed: dict[str, tuple[int, ...]] = {}
    for name, value in mapping.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise UserError(
                json_path, f'"labels" entry {name!r} must be an integer or a list of integers, got {value!r}'
            )
        parsed[name] = tuple(values)
    all_values = {v for values in parsed.values() for v in values}
    check_label_values(all_values, json_path)
    if not any(len(values) > 1 for values in parsed.values()):
        return {values[0]: name for name, values in parsed.items()}, ()
    structures = [(name, values) for name, values in parsed.items() if values != (0,)]
    order = content.get('regions_class_order')
    if not isinstance(order, list) or len(order) != len(structures) or not all(isinstance(v, int) for v in order):
        raise UserError(
            json_path,
            '"labels" declares regions, so "regions_class_order" must list '
            f'one label value per region ({len(structures)}), got {order!r}',
        )
    regions = tuple(
        {'name': name, 'values': list(values), 'paint': paint} for (name, values), paint in zip(structures, order)
    )
    names = {region['paint']: region['name'] for region in regions}
    return {
        value: names.get(value, 'background' if value == 0 else f'label {value}')
        for value in sorted(all_values | set(order))
    }, regions


def v2_cases(root: Path, folder: str, ending: str, json_path: Path, with_labels: bool) -> tuple[Case, ...]:
    images = canonical_folder(root) / folder
    if not images.is_dir():
        raise UserError(
            images, f'folder not found; an nnU-Net v2 dataset keeps its scans as {folder}/<case>_0000{ending}'
        )
    channel_suffix = f'_0000{ending}'
    case_ids = sorted(
        p.name[: -len(channel_suffix)]
        for p in images.iterdir()
        if p.name.endswith(channel_suffix) and not p.name.startswith('.')
    )
    if with_labels and not case_ids:
        raise UserError(images, f'holds no <case>{channel_suffix} files')
    return tuple(
        Case(
            case_id,
            images / f'{case_id}{channel_suffix}',
            images.parent / 'labelsTr' / f'{case_id}{ending}' if with_labels else None,
        )
        for case_id in case_ids
    )
