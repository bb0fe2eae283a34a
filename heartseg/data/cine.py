"""Cine MRI as a 4D NIfTI (x, y, z, time): its phases as 3D scans, and their masks joined back into 4D.

A one-channel model reads a 4D file as a series of phases (a model trained on several channels reads the fourth
axis as its channels instead). Each phase becomes the case ``<case>_phaseNN``, written uncompressed with the
input's header, so the same input always gives the same bytes and a rerun finds its phases unchanged; its
mask is predicted like any 3D scan's, and :func:`join_phases` stacks the phase masks into one 4D mask in the
input's exact grid: its affine, qform/sform, voxel sizes and phase count.

Example:
    >>> phase_ids('cine', 12)[:2], phase_ids('cine', 120)[-1]
    (['cine_phase00', 'cine_phase01'], 'cine_phase119')
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from heartseg.errors import UserError
from heartseg.files import atomic_write, save_nifti


def phase_count(path: Path, channels: int) -> int:
    """How many phases a scan holds for a model of ``channels`` input channels: 0 for a 3D scan (or a 4D one whose
    fourth axis is the model's channels)."""
    try:
        shape = nib.load(path).shape
    except Exception:  # an unreadable file fails later, with its reason, when its case is loaded
        return 0
    return shape[3] if len(shape) == 4 and shape[3] > 1 and channels == 1 else 0


def phase_ids(case_id: str, phases: int) -> list[str]:
    """The phases' case ids, zero-padded so that they sort in time order."""
    width = max(2, len(str(phases - 1)))
    return [f'{case_id}_phase{phase:0{width}d}' for phase in range(phases)]


def write_phases(path: Path, case_id: str, folder: Path) -> list[Path]:
    """Each phase of the 4D scan at ``path`` as ``folder/<case>_phaseNN.nii`` with the input's header; a phase file
    that already holds the same bytes is left alone."""
    image = nib.load(path)
    data = np.asarray(image.dataobj)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for phase_id, phase in zip(phase_ids(case_id, data.shape[3]), np.moveaxis(data, 3, 0)):
        target = folder / f'{phase_id}.nii'
        header = image.header.copy()
        phase_image = nib.Nifti1Image(np.ascontiguousarray(phase), None, header=header)
        phase_image.set_qform(image.get_qform(), code=int(image.header['qform_code']))
        phase_image.set_sform(image.get_sform(), code=int(image.header['sform_code']))
        content = phase_image.to_bytes()
        if not target.is_file() or target.read_bytes() != content:
            atomic_write(target, lambda temporary, content=content: Path(temporary).write_bytes(content))
        paths.append(target)
    return paths


def join_phases(phase_masks: list[Path], like: Path, target: Path) -> None:
    """The phase masks stacked along time into one 4D uint8 mask with the 4D input's header."""
    masks = [np.asarray(nib.load(path).dataobj) for path in phase_masks]
    if len({mask.shape for mask in masks}) != 1:
        raise UserError(like, 'its phase masks differ in shape')
    save_nifti(np.stack(masks, axis=3).astype(np.uint8), None, target, like=nib.load(like))
