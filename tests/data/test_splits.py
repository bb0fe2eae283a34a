"""heartseg.data.splits: seeded splits (by patient if asked) and splits files,
nU-Net's among them, checked case by case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heartseg.data.splits import grouping_text, patient_of, read_splits_file, split_cases
from heartseg.errors import UserError

CASES = [f'c{i}' for i in range(10)]
# ACDC-like ids: two frames per patient.
FRAMES = [f'patient{p:03d}_frame{f:02d}' for p in range(7) for f in (1, 12)]


@pytest.mark.parametrize('folds', [0, 3])
def test_splits_are_seeded_and_disjoint(folds):
    first = split_cases(CASES, seed=5, folds=folds, fold=0 if folds else None)
    assert first == split_cases(CASES, seed=5, folds=folds, fold=0 if folds else None)
    assert not set(first['training']) & set(first['validation'])
    assert sorted(first['training'] + first['validation']) == CASES


@pytest.mark.parametrize('folds', [0, 2, 3, 5])
def test_by_default_each_patient_s_frames_stay_on_one_side_and_folds_partition_the_cases(folds):
    splits = [split_cases(FRAMES, seed=1, folds=folds, fold=fold) for fold in range(max(folds, 1))]
    for split in splits:
        assert not {patient_of(c) for c in split['training']} & {patient_of(c) for c in split['validation']}
        assert sorted(split['training'] + split['validation']) == sorted(FRAMES)
    if folds:
        assert sorted(c for split in splits for c in split['validation']) == sorted(FRAMES)
        assert max(len(s['validation']) for s in splits) - min(len(s['validation']) for s in splits) <= 2


def test_ungrouped_splits_do_separate_a_patients_frames():
    """The grouping test above can fail: without it some patient straddles the split."""
    split = split_cases(FRAMES, seed=1, folds=3, fold=0, group_by_patient=False)
    assert {patient_of(c) for c in split['training']} & {patient_of(c) for c in split['validation']}


@pytest.mark.parametrize(
    'case_id,patient',
    [
        ('patient001_frame01', 'patient001'),
        ('patient001_frame12', 'patient001'),  # ACDC
        ('A1D9Z7_sa_ED', 'A1D9Z7_sa'),
        ('A1D9Z7_sa_ES', 'A1D9Z7_sa'),  # M&Ms
        ('sub-01_ses-02', 'sub-01'),
        ('case7_t0', 'case7'),
        ('case7_tp12', 'case7'),
        ('heart_visit2', 'heart'),
        ('la_003', 'la_003'),
        ('heart_017', 'heart_017'),
        ('23X6SY44VT9KFHR7S7OC', '23X6SY44VT9KFHR7S7OC'),  # MSD, LA2018
        ('patient_frames', 'patient_frames'),
    ],
)
def test_a_patient_is_an_id_without_its_frame_or_time_point_suffix(case_id, patient):
    assert patient_of(case_id) == patient


def test_ids_without_time_points_split_exactly_as_before_grouping():
    """MSD's la_003 must not make one patient 'la': such datasets keep the case-by-case split they always had."""
    ids = [f'la_{i:03d}' for i in range(20)]
    for folds, fold in ((0, None), (5, 2)):
        assert split_cases(ids, seed=3, folds=folds, fold=fold) == split_cases(
            ids, seed=3, folds=folds, fold=fold, group_by_patient=False
        )
    assert 'case by case' in grouping_text(ids, True)


def test_the_grouping_is_described():
    assert grouping_text(FRAMES, True).startswith('by patient: 14 scans of 7 patients, 7 with several')
    assert 'case by case, although 7 patients' in grouping_text(FRAMES, False)


def test_one_patient_cannot_be_split_and_says_so():
    with pytest.raises(UserError, match='as 1 patients'):
        split_cases(['p1_frame01', 'p1_frame02', 'p1_frame03'], seed=0, folds=2, fold=0)


def write(tmp_path: Path, content) -> Path:
    path = tmp_path / 'splits_final.json'
    path.write_text(json.dumps(content))
    return path


def nnunet_folds(case_ids: list[str], folds: int) -> list[dict]:
    return [
        {'train': [c for i, c in enumerate(case_ids) if i % folds != k], 'val': case_ids[k::folds]}
        for k in range(folds)
    ]


def test_nnunet_splits_final_and_this_projects_splits_json_are_read_as_they_are(tmp_path):
    folds = read_splits_file(write(tmp_path, nnunet_folds(CASES, 5)), CASES)
    assert [f['validation'] for f in folds] == [sorted(CASES[k::5]) for k in range(5)]
    one = {'training': CASES[2:], 'validation': CASES[:2]}
    assert read_splits_file(write(tmp_path, one), CASES) == [{'training': sorted(CASES[2:]), 'validation': CASES[:2]}]


@pytest.mark.parametrize(
    'change,message',
    [
        (lambda f: f[0]['val'].remove('c0') or f[0]['train'].append('c0'), "case 'c0' is in no fold's validation set"),
        (
            lambda f: f[1]['val'].append('c0') or f[1]['train'].remove('c0'),
            "case 'c0' is in the validation sets of folds 0 and 1",
        ),
        (lambda f: f[2]['train'].append('stranger'), "fold 2 lists 1 cases the dataset does not have, e.g. 'stranger'"),
        (lambda f: f[0]['train'].remove('c1'), "fold 0 leaves out 1 of the dataset's cases, e.g. 'c1'"),
        (lambda f: f[0]['train'].append('c0'), "fold 0 lists case 'c0' for both training and validation"),
        (lambda f: f[0].pop('val'), 'fold 0 must hold "train" and "val"'),
    ],
)
def test_a_bad_splits_file_is_refused_in_one_line_naming_the_case(tmp_path, change, message):
    folds = nnunet_folds(CASES, 5)
    change(folds)
    with pytest.raises(UserError, match='splits_final.json') as raised:
        read_splits_file(write(tmp_path, folds), CASES)
    assert message in str(raised.value) and '\n' not in str(raised.value)


def test_a_splits_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / 'splits_final.json'
    path.write_text('[{"train": [')
    with pytest.raises(UserError, match='invalid JSON'):
        read_splits_file(path, CASES)
