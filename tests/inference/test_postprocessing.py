"""heartseg.inference.postprocessing: largest components per structure or region,
and nnU-Net's choice from out-of-fold masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from heartseg.inference.postprocessing import Postprocessing, choose, component_counts
from heartseg.inference.prediction import score_case
from heartseg.outputs import Outputs

EXCLUSIVE = Outputs('softmax', ((1,), (2,)), names=('ventricle', 'wall'))
# BraTS-like nnU-Net v2 regions: whole tumour ⊃ tumour core ⊃ enhancing tumour, painted 1, 2, 3.
REGIONS = Outputs('sigmoid', ((1, 2, 3), (2, 3), (3,)), (1, 2, 3), ('whole tumour', 'tumour core', 'enhancing tumour'))


def test_keep_largest_component_removes_islands():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:8, 2:8, 2:8] = 1
    mask[15:17, 15:17, 15:17] = 1
    kept = Postprocessing.every_structure(Outputs('sigmoid', ((1,),))).apply(mask, Outputs('sigmoid', ((1,),)))
    assert kept.sum() == 216 and kept[16, 16, 16] == 0
    assert component_counts(mask, Outputs('sigmoid', ((1,),))) == [2]


def tumour() -> np.ndarray:
    """Edema (1) split in two by the core (2) around an enhancing centre (3): one whole tumour, two edema pieces."""
    mask = np.zeros((30, 12, 12), np.uint8)
    mask[2:8, 2:10, 2:10] = 1
    mask[8:14, 2:10, 2:10] = 2
    mask[10:12, 5:7, 5:7] = 3
    mask[14:18, 2:10, 2:10] = 1
    return mask


def test_regions_keep_their_largest_component_as_region_masks_without_punching_holes():
    mask = tumour()
    stray = mask.copy()
    stray[25:27, 2:4, 2:4] = 1  # a stray piece of whole tumour
    kept = Postprocessing.every_structure(REGIONS).apply(stray, REGIONS)
    assert np.array_equal(kept, mask), 'the stray piece goes; both edema pieces of the one tumour stay'


def test_regions_are_scored_as_regions_not_as_painted_values():
    """The issue's case: a prediction that paints the whole tumour as edema has the whole tumour right (Dice 1)."""
    reference = tumour()
    prediction = (reference > 0).astype(np.uint8)
    rows = score_case('case', prediction, reference, nib.Nifti1Image(reference, np.eye(4)), REGIONS)
    dice = {row['name']: row['dice'] for row in rows}
    assert dice == {'whole tumour': 1.0, 'tumour core': 0.0, 'enhancing tumour': 0.0}
    assert [row['label'] for row in rows] == [1, 2, 3]


def out_of_fold(cases: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """Structure 1 predicted with a stray false piece; structure 2's reference has two true pieces, both predicted."""
    pairs = []
    for _ in range(cases):
        reference = np.zeros((40, 12, 12), np.uint8)
        reference[2:12, 2:10, 2:10] = 1
        reference[20:26, 2:10, 2:10] = 2
        reference[32:36, 2:10, 2:10] = 2
        prediction = reference.copy()
        prediction[14:16, 3:5, 3:5] = 1
        pairs.append((prediction, reference))
    return pairs


def test_the_choice_keeps_the_largest_component_only_where_out_of_fold_dice_improves():
    pairs = out_of_fold()
    chosen, dice = choose(lambda: iter(pairs), EXCLUSIVE)
    assert chosen == Postprocessing(all_foreground=False, structures=(0,)), (
        'all together would cut a true piece of the wall'
    )
    assert dice['after'][0] > dice['before'][0] and dice['after'][1] == dice['before'][1] == 1.0
    assert chosen.describe(EXCLUSIVE) == 'keeps the largest component of ventricle'


def test_clean_out_of_fold_masks_choose_no_post_processing():
    pairs = [(reference.copy(), reference) for _, reference in out_of_fold()]
    assert choose(lambda: iter(pairs), EXCLUSIVE)[0] == Postprocessing.none()


@pytest.mark.parametrize('postprocessing', [Postprocessing.none(), Postprocessing(True, (1,))])
def test_a_choice_survives_its_json_form(postprocessing):
    assert Postprocessing.from_dict(postprocessing.to_dict()) == postprocessing
