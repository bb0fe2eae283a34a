"""Preprocessing once: each case checked, preprocessed and cached under a key made from its files'
content, the preprocessing and the resampling libraries' versions.

Example::

    subjects = preprocess_cases(spec.cases, spec, Preprocessing((1.25,) * 3), Path('cache'))
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import SimpleITK as sitk
import torch
import torchio as tio
from tqdm import tqdm

from heartseg.data.cases import Case, DatasetSpec
from heartseg.data.reading import check_headers, load_case
from heartseg.data.validation import CaseCheck
from heartseg.errors import UserError
from heartseg.files import atomic_torch_save, file_digest
from heartseg.preprocessing.preprocessing import PREPROCESSING_VERSION, Preprocessing


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
