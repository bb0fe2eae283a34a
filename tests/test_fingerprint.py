"""heartseg.fingerprint: geometry in canonical axis order, in the affine's millimetres."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from heartseg.fingerprint import canonical_header


def test_canonical_header_reads_spacing_from_the_affine_in_ras_order():
    swap_first_axes = np.diag([2.0, 3.0, 4.0, 1.0])[[1, 0, 2, 3]]  # voxel axis 0 runs along y (2 mm), axis 1 along x (3 mm)
    image = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), swap_first_axes)
    image.header.set_zooms((1.0, 1.0, 1.0))  # a pixdim that disagrees with the sform
    header = canonical_header('case', image)
    assert header.spacing == (3.0, 2.0, 4.0) and header.shape == (6, 5, 7) and header.orientation == 'ARS'
