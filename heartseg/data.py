"""From a dataset folder (MSD or nnU-Net v2 layout) to validated, preprocessed TorchIO subjects.

Two layouts, told apart by :func:`read_dataset` alone:

- **MSD** (Medical Segmentation Decathlon, nnU-Net v1): ``dataset.json`` with
  ``modality``, ``labels`` keyed by value and a ``training`` list of
  image/label paths; multi-channel images are 4D files.
- **nnU-Net v2 raw**: ``dataset.json`` with ``channel_names``, ``labels`` as
  ``{name: value}`` (a list of values is a region), ``numTraining`` and
  ``file_ending``; ``imagesTr/<case>_0000<ending>`` and
  ``labelsTr/<case><ending>``; test scans in ``imagesTs/``.

The data flows one way: ``dataset.json`` → :class:`Case` list → validated
volumes → preprocessed subjects (canonical orientation, target spacing,
z-normalised; computed once and cached) → training patches.

Example::

    spec = read_dataset(Path('data/Task02_Heart'))
    subjects = preprocess_cases(spec.cases, spec, Preprocessing((1.25,) * 3), Path('cache'))
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio
from tqdm import tqdm

from heartseg.checkpoint import ModelPlan
from heartseg.errors import UserError
from heartseg.files import atomic_torch_save, canonical_folder, file_digest
from heartseg.fingerprint import CaseHeader, canonical_header
from heartseg.outputs import foreground_values
from heartseg.validation import CaseCheck, channels_first

# Bump when preprocessing changes, so that stale cache entries are never reused; checkpoints record it.
# 3: a z-score per channel (before, the channels were pooled); 4: labels resampled as one-hot masks.
PREPROCESSING_VERSION = 4
PER_CHANNEL_SINCE = 3
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


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a raw scan into network input; a checkpoint's plan records it (:meth:`for_plan`).

    Canonical (RAS) orientation, then resampling to the target spacing: images
    linearly; label maps as one mask per value, each resampled linearly, then
    the arg max (nnU-Net's ``resize_segmentation``). Nearest-neighbour
    resampling would shift a label against its image by half a source voxel
    wherever the spacing halves, since each new voxel centre then falls midway
    between two old ones. Last, a z-score per image channel.

    Example:
        >>> label = torch.zeros(1, 8, 8, 8)
        >>> label[0, 3:7] = 1  # source voxels 3 to 6: centred on 4.5, where coarse voxel 2 is
        >>> subject = tio.Subject(image=tio.ScalarImage(tensor=label + 1), label=tio.LabelMap(tensor=label))
        >>> halved = Preprocessing((2.0, 2.0, 2.0))(subject)['label'].data[0]
        >>> halved[:, 0, 0].tolist(), halved[:, 0, 1].tolist()  # the edges, half inside, alternate
        ([0, 1, 1, 1], [0, 0, 1, 0])
    """

    target_spacing: tuple[float, float, float]
    normalization: str = 'zscore'

    def __call__(self, subject: tio.Subject) -> tio.Subject:
        """The preprocessed copy of a subject with an ``image`` and, for training cases, a ``label``."""
        assert self.normalization == 'zscore', f"the only normalisation is 'zscore', got {self.normalization!r}"
        canonical = tio.ToCanonical()(subject)
        resample = tio.Resample(self.target_spacing)
        image = resample(canonical['image'])
        image.set_data(z_score_per_channel(image.data.float()))
        preprocessed = tio.Subject(
            image=image, **{key: value for key, value in subject.items() if not isinstance(value, tio.Image)}
        )
        if 'label' in subject:
            preprocessed.add_image(resample_label(canonical['label'], resample), 'label')
        return preprocessed

    @classmethod
    def for_plan(cls, plan: ModelPlan, path: Path) -> Preprocessing:
        """The preprocessing a checkpoint's model was trained with,
        or a one-line error where this code cannot reproduce it."""
        if plan.normalization != 'zscore':
            raise UserError(
                path,
                f'its model was trained on {plan.normalization!r}-normalised images; this version knows only z-scores',
            )
        if plan.preprocessing_version > PREPROCESSING_VERSION:
            raise UserError(
                path,
                f'its preprocessing (version {plan.preprocessing_version}) is '
                f"newer than this code's ({PREPROCESSING_VERSION}); update heartseg",
            )
        if plan.preprocessing_version < PER_CHANNEL_SINCE and plan.channels > 1:
            raise UserError(
                path,
                f'its {plan.channels} channels were z-scored together (preprocessing version '
                f'{plan.preprocessing_version}), which this version no longer reproduces; retrain it',
            )
        return cls(plan.target_spacing, plan.normalization)


# Masks resampled to within this of each other are a tie (float rounding of the grid would otherwise break it one way).
TIE_TOLERANCE = 1e-3


def resample_label(label: tio.LabelMap, resample: tio.Resample) -> tio.LabelMap:
    """A label map on ``resample``'s grid: each value's mask resampled linearly, the most likely value kept.

    Ties (a new voxel exactly half inside, as along every edge of a 2x
    downsampling) go to the higher value on alternate voxels, like a
    checkerboard: always to the lower one would shrink structures by about a
    quarter of a voxel on every side, always to the higher would grow them.
    """
    masks = (
        (value, resample(tio.ScalarImage(tensor=(label.data == value).float(), affine=label.affine)))
        for value in torch.unique(label.data).tolist()
    )
    first_value, first = next(masks)
    best, chosen = first.data, torch.full(first.data.shape, first_value, dtype=torch.uint8)
    odd = _checkerboard(first.data.shape[1:])
    for value, mask in masks:
        wins = (mask.data > best + TIE_TOLERANCE) | (odd & ((mask.data - best).abs() <= TIE_TOLERANCE))
        best = torch.where(wins, mask.data, best)
        chosen[wins] = value
    return tio.LabelMap(tensor=chosen, affine=first.affine)


def _checkerboard(shape: tuple[int, ...]) -> torch.Tensor:
    """``(1, X, Y, Z)``: True where the sum of a voxel's indices is odd."""
    indices = torch.meshgrid(*(torch.arange(n) for n in shape), indexing='ij')
    return (sum(indices) % 2 == 1)[None]


def z_score_per_channel(image: torch.Tensor) -> torch.Tensor:
    """Each channel to zero mean and unit standard deviation on its own, as nnU-Net normalises modalities.

    TorchIO's ``ZNormalization`` pools all channels, which would let one
    modality's intensities set another's scale.

    Example:
        >>> z_score_per_channel(torch.tensor([[[[1.0, 3.0]]], [[[100.0, 300.0]]]])).flatten().tolist()
        [-0.7071067690849304, 0.7071067690849304, -0.7071067690849304, 0.7071067690849304]
    """
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    return (image - mean) / image.std(dim=(1, 2, 3), keepdim=True)


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


def _resolve_inside(root: Path, relative: object, json_path: Path, key: str) -> Path:
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


def _parse_int_keys(mapping: object, json_path: Path, key: str) -> dict[int, str]:
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(json_path, f'"{key}" must be a non-empty object')
    try:
        return {int(value): str(name) for value, name in mapping.items()}
    except ValueError:
        raise UserError(json_path, f'"{key}" keys must be integers, got {list(mapping)}') from None


def read_dataset(root: Path, allow_duplicates: bool = False) -> DatasetSpec:
    """Read and check ``root/dataset.json`` (MSD or nnU-Net v2 layout) without opening any image.

    Args:
        allow_duplicates: Keep a case listed twice instead of raising, so
            ``analyze_data.py`` can report it among the other problems.

    Raises:
        UserError: The file is missing or invalid JSON, a key is missing or
            invalid, a case is listed twice, or a path is absolute or escapes ``root``.
    """
    root = root.expanduser()
    json_path = root / 'dataset.json'
    if not json_path.is_file():
        raise UserError(
            json_path,
            'dataset.json not found; '
            'expected an MSD folder (dataset.json, imagesTr/, labelsTr/) or an nnU-Net v2 raw folder',
        )
    try:
        content = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(json_path, f'invalid JSON: {error}') from None
    if not isinstance(content, dict):
        raise UserError(json_path, 'top level must be a JSON object')
    if 'channel_names' in content or 'file_ending' in content:
        return _read_nnunet_v2(root, json_path, content)
    return _read_msd(root, json_path, content, allow_duplicates)


def _check_label_values(values: Collection[int], json_path: Path) -> None:
    if 0 not in values:
        raise UserError(json_path, '"labels" must declare 0 (background)')
    if not all(0 <= value <= MAX_LABEL_VALUE for value in values):
        raise UserError(
            json_path,
            f'"labels" values must be 0 to {MAX_LABEL_VALUE} (label maps are stored as uint8), got {sorted(values)}',
        )


def _read_msd(root: Path, json_path: Path, content: dict, allow_duplicates: bool) -> DatasetSpec:
    for key in ('labels', 'modality', 'training'):
        if key not in content:
            raise UserError(
                json_path,
                f'missing required key "{key}" (an MSD dataset.json; '
                f'nnU-Net v2 ones have {", ".join(V2_REQUIRED_KEYS)})',
            )
    labels = _parse_int_keys(content['labels'], json_path, 'labels')
    _check_label_values(labels, json_path)
    modalities = _parse_int_keys(content['modality'], json_path, 'modality')
    training = content['training']
    if not isinstance(training, list) or not training:
        raise UserError(json_path, '"training" must be a non-empty list')
    cases = []
    seen: set[str] = set()
    for entry in training:
        if not isinstance(entry, dict) or 'image' not in entry or 'label' not in entry:
            raise UserError(json_path, f'each "training" entry needs "image" and "label", got {entry!r}')
        image = _resolve_inside(root, entry['image'], json_path, 'image')
        label = _resolve_inside(root, entry['label'], json_path, 'label')
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
        test_cases=_msd_test_cases(root, json_path, content),
    )


def _msd_test_cases(root: Path, json_path: Path, content: dict) -> tuple[Case, ...]:
    """Test images from ``"test"``, or else every NIfTI file in ``imagesTs/``."""
    listed = content.get('test') or []
    if not isinstance(listed, list):
        raise UserError(json_path, f'"test" must be a list, got {type(listed).__name__}')
    if not listed and (root / 'imagesTs').is_dir():
        listed = sorted(p.relative_to(root).as_posix() for p in (root / 'imagesTs').glob('*.nii*'))
    paths = [entry.get('image') if isinstance(entry, dict) else entry for entry in listed]
    images = [_resolve_inside(root, path, json_path, 'test') for path in paths]
    return tuple(Case(case_id_from_path(image), image) for image in images)


def _read_nnunet_v2(root: Path, json_path: Path, content: dict) -> DatasetSpec:
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
    modalities = _parse_int_keys(content['channel_names'], json_path, 'channel_names')
    if sorted(modalities) != list(range(len(modalities))):
        raise UserError(json_path, f'"channel_names" keys must be 0..{len(modalities) - 1}, got {sorted(modalities)}')
    if len(modalities) > 1:
        raise UserError(
            json_path,
            f'"channel_names" declares {len(modalities)} channels; multi-channel nnU-Net v2 datasets '
            '(one file per channel) are not supported yet, single-channel ones and MSD 4D files are',
        )
    labels, regions = _parse_v2_labels(content, json_path)
    cases = _v2_cases(root, 'imagesTr', ending, json_path, with_labels=True)
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
        test_cases=_v2_cases(root, 'imagesTs', ending, json_path, with_labels=False)
        if (root / 'imagesTs').is_dir()
        else (),
        regions=regions,
    )


def _parse_v2_labels(content: dict, json_path: Path) -> tuple[dict[int, str], tuple[dict, ...]]:
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
    _check_label_values(all_values, json_path)
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


def _v2_cases(root: Path, folder: str, ending: str, json_path: Path, with_labels: bool) -> tuple[Case, ...]:
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


def load_nifti(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI header, turning every failure into a one-line error."""
    return CaseCheck(strict=True).open(path)


def read_header(case: Case, spec: DatasetSpec) -> CaseHeader:
    """Check an image's header (not its voxels) and return its geometry."""
    check = CaseCheck(case.case_id, strict=True)
    image = check.open(case.image)
    check.dimensions(case.image, image, len(spec.modalities))
    return canonical_header(case.case_id, image)


def read_voxels(path: Path, image: nib.Nifti1Image, channels: int) -> np.ndarray:
    """Return the checked voxel array as ``(channels, X, Y, Z)`` float32."""
    check = CaseCheck(strict=True)
    check.dimensions(path, image, channels)
    return channels_first(check.voxels(path, image, np.float32))


def read_label(path: Path, image: nib.Nifti1Image, declared: Collection[int]) -> np.ndarray:
    """Return the label map as ``(1, X, Y, Z)`` uint8, checking its values."""
    label_data = read_voxels(path, image, channels=1)
    CaseCheck(strict=True).label_values(path, np.unique(label_data), declared)
    return label_data.astype(np.uint8)


def image_subject(path: Path, image_nifti: nib.Nifti1Image, channels: int) -> tio.Subject:
    """A validated image as a TorchIO subject in its original grid."""
    image = read_voxels(path, image_nifti, channels)
    CaseCheck(strict=True).intensity_spread(path, image)
    return tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(image), affine=image_nifti.affine),
        case_id=case_id_from_path(path),
    )


def check_headers(case: Case, spec: DatasetSpec) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Open and check both headers (dimensions, one grid) without reading voxels."""
    check = CaseCheck(case.case_id, strict=True)
    image, label = check.open(case.image), check.open(case.label)
    check.dimensions(case.image, image, len(spec.modalities))
    check.dimensions(case.label, label, 1)
    check.same_grid(case.image, image, case.label, label)
    return image, label


def load_case(case: Case, spec: DatasetSpec, image_nifti: nib.Nifti1Image, label_nifti: nib.Nifti1Image) -> tio.Subject:
    """Read the voxels of a case whose headers passed :func:`check_headers` into a subject in its original grid."""
    subject = image_subject(case.image, image_nifti, channels=len(spec.modalities))
    # Label values are checked by the caller, against the cache entry too; here they are kept as read.
    label = read_voxels(case.label, label_nifti, channels=1)
    subject.add_image(tio.LabelMap(tensor=torch.from_numpy(label), affine=image_nifti.affine), 'label')
    return subject


def _cache_key(case: Case, preprocessing: Preprocessing) -> str:
    """What a cache entry is made from: the files' content (not their size and time, which an edit in place or
    ``cp -p`` keeps), the preprocessing, and the versions of the libraries
    that resample (TorchIO's grid has changed)."""
    parts = [PREPROCESSING_VERSION, preprocessing.target_spacing, tio.__version__, sitk.Version.VersionString()]
    parts += [file_digest(path) for path in (case.image, case.label)]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def preprocess_case(
    case: Case, spec: DatasetSpec, preprocessing: Preprocessing, cache_dir: Path, warn: bool = True
) -> tio.Subject:
    """Return the preprocessed subject, computing and caching it on first use.

    The case is checked whether or not its cache entry exists: its headers, and
    its label values (kept in the entry) against the labels ``dataset.json``
    declares now. Its voxels are read and checked when the entry is made.
    ``warn`` prints the case's warnings, such as a label map without foreground.
    """
    image_nifti, label_nifti = check_headers(case, spec)
    cache_path = cache_dir / f'{case.case_id}-{_cache_key(case, preprocessing)}.pt'
    cached = _read_cache_entry(cache_path) if cache_path.is_file() else None
    if cached is None:
        cached = _preprocess(load_case(case, spec, image_nifti, label_nifti), preprocessing)
        atomic_torch_save(cached, cache_path)
    check = CaseCheck(case.case_id, strict=True)
    check.label_values(case.label, cached['label_values'].numpy(), spec.labels)
    for problem in check.warnings if warn else []:
        tqdm.write(f'warning: case {case.case_id}: {problem.file}: {problem.message}', file=sys.stderr)
    affine = cached['affine'].numpy()
    return tio.Subject(
        image=tio.ScalarImage(tensor=cached['image'], affine=affine),
        label=tio.LabelMap(tensor=cached['label'], affine=affine),
        case_id=case.case_id,
    )


def _read_cache_entry(path: Path) -> dict[str, torch.Tensor] | None:
    """A cache entry, or None when it is damaged (a full disk, a copy cut short):
    then the case is preprocessed again."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # torch raises many unrelated types for damaged files
        tqdm.write(
            f'warning: {path}: unreadable cache entry ({type(error).__name__}); preprocessing the case again',
            file=sys.stderr,
        )
        return None


def _preprocess(original: tio.Subject, preprocessing: Preprocessing) -> dict[str, torch.Tensor]:
    """The cache entry: preprocessed tensors, and the label values as read, for checking on every run."""
    subject = preprocessing(original)
    return {
        'image': subject['image'].data.float(),
        'label': subject['label'].data.to(torch.uint8),
        'affine': torch.from_numpy(subject['image'].affine),
        'label_values': torch.unique(original['label'].data),
    }


def preprocess_cases(
    cases: list[Case] | tuple[Case, ...],
    spec: DatasetSpec,
    preprocessing: Preprocessing,
    cache_dir: Path,
    show_progress: bool = True,
) -> list[tio.Subject]:
    """Preprocess every case once (validating it), with a progress bar and warnings when ``show_progress``."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(cache_dir, f'cannot create cache folder ({error.strerror})') from None
    with tqdm(cases, desc='Preprocessing', unit='case', leave=False, disable=not show_progress) as progress:
        return [preprocess_case(case, spec, preprocessing, cache_dir, warn=show_progress) for case in progress]
