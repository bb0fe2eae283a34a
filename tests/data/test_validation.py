"""heartseg/validation.py: one rule set, strict for training and exhaustive for analysis."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import flatten_sform

from heartseg.analysis.cases import CaseTask, analyze_case
from heartseg.data.dataset import read_dataset
from heartseg.data.validation import CaseCheck, Problem
from heartseg.errors import UserError
from heartseg.preprocessing.cache import preprocess_case
from heartseg.preprocessing.preprocessing import Preprocessing


def rewrite(path: Path, change) -> None:
    image = nib.load(path)
    data, affine = change(np.asarray(image.dataobj).astype(np.float32), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def with_voxel(value):
    def change(data, affine):
        data[0, 0, 0] = value
        return data, affine

    return change


def shifted(data, affine):
    affine[:3, 3] += 5.0
    return data, affine


CORRUPTIONS = {
    'missing_file': lambda case: case.image.unlink(),
    'unreadable_file': lambda case: case.label.write_bytes(gzip.compress(b'not nifti' * 50)),
    'not_3d': lambda case: rewrite(case.image, lambda data, affine: (np.stack([data, data], -1), affine)),
    'invalid_affine': lambda case: flatten_sform(case.image),
    'grid_mismatch': lambda case: rewrite(case.label, shifted),
    'non_finite': lambda case: rewrite(case.image, with_voxel(np.nan)),
    'constant_image': lambda case: rewrite(case.image, lambda data, affine: (np.full_like(data, 5.0), affine)),
    'non_integer_label': lambda case: rewrite(case.label, with_voxel(0.5)),
    'undeclared_label': lambda case: rewrite(case.label, with_voxel(7)),
}


@pytest.mark.parametrize('kind', list(CORRUPTIONS))
def test_training_stops_with_the_first_problem_analysis_lists(kind, small_dataset, tmp_path):
    spec = read_dataset(small_dataset)
    case = spec.cases[0]
    CORRUPTIONS[kind](case)
    result = analyze_case(CaseTask(case, 'training', tuple(spec.labels), 1, small_dataset))
    errors = [problem for problem in result.problems if not problem.is_warning]
    assert [problem.kind for problem in errors] == [kind]
    with pytest.raises(UserError) as raised:
        preprocess_case(case, spec, Preprocessing((3.0, 3.0, 3.0)), tmp_path / 'cache')
    assert raised.value.problem == errors[0].message
    assert Path(raised.value.where).name == Path(errors[0].file).name


def test_strict_check_raises_at_the_first_error_and_keeps_warnings(tmp_path):
    path = tmp_path / 'label.nii.gz'
    strict = CaseCheck('case', strict=True)
    strict.label_values(path, np.array([0.0]), declared=(0, 1))
    assert [problem.kind for problem in strict.warnings] == ['empty_label']
    with pytest.raises(UserError, match='label values must be integers'):
        strict.label_values(path, np.array([0.0, 0.5, 9.0]), declared=(0, 1))


def test_collecting_check_lists_every_problem(tmp_path):
    check = CaseCheck('case')
    check.label_values(tmp_path / 'label.nii.gz', np.array([0.5, 3.0, np.nan]), declared=(0, 1))
    assert [problem.kind for problem in check.problems] == ['non_integer_label', 'undeclared_label']
    assert check.open(tmp_path / 'absent.nii.gz') is None
    assert check.problems[-1].kind == 'missing_file'


def test_an_unknown_problem_kind_is_refused():
    with pytest.raises(AssertionError, match='problem kind must be one of'):
        Problem('case', 'odd', 'file', 'message')
