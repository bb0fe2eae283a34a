"""Opening a case's NIfTI files: headers first, then checked voxels, as arrays or TorchIO subjects in the
scan's own grid. Every failure is a one-line :class:`~heartseg.errors.UserError` naming the file.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from heartseg.data.cases import Case, DatasetSpec, case_id_from_path
from heartseg.data.fingerprint import CaseHeader, canonical_header
from heartseg.data.validation import CaseCheck, channels_first


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
