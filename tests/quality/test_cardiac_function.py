"""heartseg.quality.cardiac_function: volumes, ejection fractions and LV mass of a beating phantom whose
volumes are known in closed form, at 1 mm, with thick slices and on an oblique grid; structures found by name.

The phantom, in world millimetres around the origin: an ellipsoidal LV cavity (in-plane radius ``a``, long
radius ``C`` along z), the myocardium between it and an ellipsoid of in-plane radius ``a + t``, and a crescent
RV, the half (x > 0) of the region between that ellipsoid and a larger one of in-plane radius ``r``.
An ellipsoid holds 4/3 pi a b c, so every volume is exact.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from heartseg.data.fingerprint import rotation_matrix
from heartseg.errors import EXIT_USER_ERROR, UserError, run_cli
from heartseg.quality.cardiac_function import (
    MYOCARDIUM_DENSITY,
    Structures,
    agreement,
    function_row,
    phase_volumes,
    training_rv_lv_range,
    write_function_report,
)
from heartseg.quality.qc import SEVERAL_STRUCTURES, VOLUME_RATIO_RANGE, out_of_range, volume_ratio_range
from predict import main as predict_main

C = 50.0  # the long radius along z, in mm
PHASES = {'ED': {'a': 25.0, 't': 8.0, 'r': 45.0}, 'ES': {'a': 17.0, 't': 12.0, 'r': 38.0}}
ACDC = Structures(lv=3, myo=2, rv=1)


def ellipsoid_ml(in_plane: float) -> float:
    return 4 / 3 * math.pi * in_plane * in_plane * C / 1000


def analytic(phase: dict) -> dict[str, float]:
    outer = ellipsoid_ml(phase['a'] + phase['t'])
    return {
        'LV': ellipsoid_ml(phase['a']),
        'MYO': outer - ellipsoid_ml(phase['a']),
        'RV': (ellipsoid_ml(phase['r']) - outer) / 2,
    }


def phantom(phase: dict, spacing: tuple[float, float, float], rotation_degrees=(0.0, 0.0, 0.0)):
    """The phase's label map (RV 1, MYO 2, LV 3) on a grid of ``spacing`` rotated by ``rotation_degrees``, and its
    affine; voxel centres fall on odd multiples of half a voxel, so thick slices tile the long axis exactly."""
    direction = rotation_matrix(np.array(rotation_degrees))
    extent = 2 * max(phase['r'], C) + 20  # mm, the grid's side, with room for any rotation
    shape = tuple(int(math.ceil(extent / s / 2)) * 2 for s in spacing)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = -(direction @ ((np.array(shape) / 2 - 0.5) * np.array(spacing)))  # the grid's centre at 0
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), axis=-1).reshape(-1, 3)
    x, y, z = (affine[:3, :3] @ grid.T + affine[:3, 3:4]).reshape(3, *shape)

    def inside(in_plane: float) -> np.ndarray:
        return (x / in_plane) ** 2 + (y / in_plane) ** 2 + (z / C) ** 2 <= 1

    outer = inside(phase['a'] + phase['t'])
    labels = np.zeros(shape, np.uint8)
    labels[inside(phase['r']) & ~outer & (x > 0)] = 1
    labels[outer] = 2
    labels[inside(phase['a'])] = 3
    return labels, affine


@pytest.mark.parametrize(
    'spacing, rotation',
    [((1.0, 1.0, 1.0), (0, 0, 0)), ((1.5, 1.5, 10.0), (0, 0, 0)), ((1.25, 1.25, 1.25), (20, 10, 30))],
    ids=['1 mm', 'thick slices', 'oblique'],
)
def test_ejection_fractions_and_mass_of_the_phantom_are_within_one_percent(spacing, rotation):
    volumes = {name: phase_volumes(*phantom(phase, spacing, rotation), ACDC) for name, phase in PHASES.items()}
    row = function_row('phantom', volumes)
    ed, es = analytic(PHASES['ED']), analytic(PHASES['ES'])
    assert (row['ed'], row['es']) == ('ED', 'ES')
    expected = {
        'LVEDV_ml': ed['LV'],
        'LVESV_ml': es['LV'],
        'LVEF_pct': 100 * (ed['LV'] - es['LV']) / ed['LV'],
        'LVM_g': MYOCARDIUM_DENSITY * ed['MYO'],
        'RVEDV_ml': ed['RV'],
        'RVEF_pct': 100 * (ed['RV'] - es['RV']) / ed['RV'],
    }
    for index, value in expected.items():
        assert row[index] == pytest.approx(value, rel=0.01), (index, row[index], value)
    assert row['flag'] == 0 and row['reasons'] == ''


def test_phases_out_of_order_still_give_ed_and_es():
    ed, mid, es = {'LV': 150.0, 'RV': 160.0}, {'LV': 100.0, 'RV': 120.0}, {'LV': 60.0, 'RV': 80.0}
    row = function_row('p', {'t0': mid, 't1': es, 't2': ed, 't3': mid})
    assert (row['ed'], row['es'], row['LVEF_pct']) == ('t2', 't1', 60.0)
    assert function_row('p', {'t0': mid, 't1': es, 't2': ed}, ed_first=True)['ed'] == 't0'


def test_a_single_frame_gets_volumes_and_mass_but_no_ejection_fraction():
    row = function_row('p', {'frame01': {'LV': 150.0, 'MYO': 100.0, 'RV': 160.0}})
    assert row['LVEDV_ml'] == 150.0 and row['LVM_g'] == 105.0 and row['LVEF_pct'] == '' and row['es'] == ''
    assert 'one frame' in row['reasons'] and row['flag'] == 0


@pytest.mark.parametrize(
    'phases, reason',
    [
        ({'a': {'LV': 100.0}, 'b': {'LV': 95.0}}, 'LV EF 5% outside 10 to 85%'),
        ({'a': {'LV': 100.0, 'RV': 90.0}, 'b': {'LV': 50.0, 'RV': 95.0}}, 'RV ESV at or above EDV'),
        ({'a': {'LV': 100.0, 'MYO': 0.0}, 'b': {'LV': 50.0, 'MYO': 90.0}}, 'MYO missing in a'),
        (
            {f't{i}': {'LV': v} for i, v in enumerate([150, 70, 140, 150, 65, 145])},
            'LV volume curve has more than one clear minimum',
        ),
    ],
)
def test_implausible_rows_are_flagged_with_the_reason(phases, reason):
    row = function_row('p', phases)
    assert row['flag'] == 1 and reason in row['reasons'], row


def test_an_rv_lv_edv_ratio_outside_the_training_set_is_flagged():
    summary = {
        'case_ids': ['p1_frame01', 'p1_frame09', 'p2_frame01', 'p2_frame07'],
        'structure_volumes_ml': [[150, 20, 100], [90, 25, 40], [100, 15, 125], [60, 16, 50]],
    }
    structures = Structures(lv=3, myo=2, rv=1)
    rv_lv = training_rv_lv_range(summary, (1, 2, 3), structures)
    assert rv_lv == (0.8, 1.5), 'each training patient at its ED: 150/100 and 100/125, not the ES ratio 90/40'
    normal = {'ed': {'LV': 100.0, 'RV': 120.0}, 'es': {'LV': 40.0, 'RV': 60.0}}
    assert function_row('p', normal, rv_lv_range=rv_lv)['flag'] == 0
    dilated_rv = {'ed': {'LV': 100.0, 'RV': 210.0}, 'es': {'LV': 40.0, 'RV': 110.0}}
    row = function_row('p', dilated_rv, rv_lv_range=rv_lv)
    assert row['flag'] == 1 and "RV/LV EDV ratio 2.10 outside the training set's 0.80 to 1.50" in row['reasons']
    without_ids = {'structure_volumes_ml': summary['structure_volumes_ml']}
    assert training_rv_lv_range(without_ids, (1, 2, 3), structures) is None, 'an older checkpoint: no range'
    assert training_rv_lv_range(summary, (1, 2, 3), Structures(lv=3, myo=2)) is None, 'no RV: no ratio'


def test_structures_are_found_by_name_or_given():
    assert Structures.from_labels({0: 'background', 1: 'right ventricle', 2: 'Myocardium', 3: 'LV_cavity'}) == ACDC
    assert Structures.from_labels({0: 'background', 1: 'left atrium'}) is None, 'no LV cavity: no report'
    assert Structures.from_labels({0: 'background', 1: 'LV'}) == Structures(lv=1)
    assert Structures.parse('LV=3,MYO=2,RV=1', {0: 'bg', 1: 'a', 2: 'b', 3: 'c'}) == ACDC
    for text, problem in (('LV=7', 'no label 7'), ('MYO=2', 'needs LV'), ('LA=1', 'is not NAME=VALUE')):
        with pytest.raises(UserError, match=problem):
            Structures.parse(text, {0: 'bg', 1: 'a', 2: 'b', 3: 'c'})


def test_agreement_gives_n_r_bias_and_limits():
    reference = [function_row(f'p{i}', {'a': {'LV': 100.0 + 10 * i}, 'b': {'LV': 40.0 + 3 * i}}) for i in range(5)]
    predicted = [function_row(f'p{i}', {'a': {'LV': 102.0 + 10 * i}, 'b': {'LV': 40.0 + 3 * i}}) for i in range(5)]
    rows = {row['index']: row for row in agreement(predicted, reference)}
    assert rows['LVEDV_ml']['n'] == 5 and rows['LVEDV_ml']['bias'] == 2.0 and rows['LVEDV_ml']['sd'] == 0.0
    assert rows['LVEDV_ml']['r'] == 1.0 and rows['LVEDV_ml']['loa_low'] == rows['LVEDV_ml']['loa_high'] == 2.0
    assert rows['RVEF_pct']['n'] == 0, 'an index no row gives is counted as none'


def frames_folder(dataset: Path, target: Path) -> tuple[Path, Path]:
    """Two synthetic scans as one patient's two frames (ACDC's naming), and their labels under the same names."""
    scans, labels = target / 'scans', target / 'labels'
    for folder in (scans, labels):
        folder.mkdir(parents=True)
    for frame, case in (('frame01', 'synthetic_000'), ('frame12', 'synthetic_001')):
        shutil.copy(dataset / 'imagesTr' / f'{case}.nii.gz', scans / f'p001_{frame}.nii.gz')
        shutil.copy(dataset / 'labelsTr' / f'{case}.nii.gz', labels / f'p001_{frame}.nii.gz')
    return scans, labels


def independent_row(folder: Path, label: int) -> dict[str, float]:
    """LV volumes and EF from the mask files, computed here without the module: count times |det(affine)|."""
    volumes = {}
    for frame in ('frame01', 'frame12'):
        image = nib.load(folder / f'p001_{frame}.nii.gz')
        volumes[frame] = np.count_nonzero(np.asarray(image.dataobj) == label) * abs(np.linalg.det(image.affine[:3, :3]))
    ed, es = max(volumes.values()) / 1000, min(volumes.values()) / 1000
    return {'LVEDV_ml': ed, 'LVESV_ml': es, 'LVEF_pct': 100 * (ed - es) / ed}


def test_predict_writes_function_csv_from_frame_pairs(trained, small_dataset_template, tmp_path, capsys):
    scans, labels = frames_folder(small_dataset_template, tmp_path)
    output = tmp_path / 'out'
    argv = ['--checkpoint', str(trained), '--input', str(scans), '--output', str(output), '--labels', str(labels)]
    assert run_cli(predict_main, [*argv, '--structures', 'LV=1']) == 0
    assert 'Cardiac function: 1 patient(s)' in capsys.readouterr().out
    for table, masks in (('function.csv', output), ('function_reference.csv', labels)):
        (row,) = csv.DictReader((output / table).read_text().splitlines())
        assert row['patient'] == 'p001' and {row['ed'], row['es']} == {'p001_frame01', 'p001_frame12'}
        for index, value in independent_row(masks, label=1).items():
            assert float(row[index]) == pytest.approx(value, abs=0.05), (table, index)
    agreement_rows = {row['index']: row for row in csv.DictReader((output / 'function_agreement.csv').open())}
    (row,) = csv.DictReader((output / 'function.csv').read_text().splitlines())
    page = (output / 'review.html').read_text()
    assert 'LV EF (%)' in page and f'"LVEF_pct": {float(row["LVEF_pct"])}' in page, 'each phase shows its patient'
    assert agreement_rows['LVEDV_ml']['n'] == '1'


def test_a_model_without_an_lv_cavity_is_told_so_and_a_bad_structures_flag_is_refused(
    trained, small_dataset_template, tmp_path, capsys
):
    scans, _ = frames_folder(small_dataset_template, tmp_path)
    argv = ['--checkpoint', str(trained), '--input', str(scans)]
    assert run_cli(predict_main, [*argv, '--output', str(tmp_path / 'out')]) == 0
    assert 'Cardiac function: none' in capsys.readouterr().out, 'left atrium is no LV cavity'
    assert not (tmp_path / 'out' / 'function.csv').exists()
    for flags, problem in ((['--structures', 'LV=5'], 'no label 5'), (['--ed-first'], 'has no effect')):
        assert run_cli(predict_main, [*argv, '--output', str(tmp_path / 'refused'), *flags]) == EXIT_USER_ERROR
        assert problem in capsys.readouterr().err
        assert not (tmp_path / 'refused').exists(), 'refused before any output folder exists'


def cine_inputs(dataset: Path, target: Path) -> tuple[Path, Path]:
    """Two synthetic scans on one grid, as a folder of two 3D frames and as one 4D cine file of two phases."""
    first = nib.load(dataset / 'imagesTr' / 'synthetic_000.nii.gz')
    second = np.asarray(nib.load(dataset / 'imagesTr' / 'synthetic_001.nii.gz').dataobj)
    frames, cine = target / 'frames', target / 'cine'
    frames.mkdir(parents=True)
    cine.mkdir()
    phases = [np.asarray(first.dataobj), second]
    for index, data in enumerate(phases):
        nib.save(nib.Nifti1Image(data, first.affine), frames / f'heart_phase{index:02d}.nii.gz')
    cine_image = nib.Nifti1Image(np.stack(phases, axis=3), first.affine)
    cine_image.header.set_zooms((*first.header.get_zooms()[:3], 0.03))  # 30 ms between phases
    nib.save(cine_image, cine / 'heart.nii.gz')
    return frames, cine


def test_a_4d_cine_gives_a_4d_mask_in_its_grid_equal_to_its_frames_masks_and_the_same_row(
    trained, small_dataset_template, tmp_path, capsys
):
    frames, cine = cine_inputs(small_dataset_template, tmp_path)
    for folder in (frames, cine):
        argv = ['--checkpoint', str(trained), '--input', str(folder), '--output', str(tmp_path / f'{folder.name}_out')]
        assert run_cli(predict_main, [*argv, '--structures', 'LV=1']) == 0
    assert '4D masks of 1 cine input(s): heart' in capsys.readouterr().out
    source, mask = nib.load(cine / 'heart.nii.gz'), nib.load(tmp_path / 'cine_out' / 'heart.nii.gz')
    assert mask.shape == source.shape and np.array_equal(mask.affine, source.affine)
    assert mask.header.get_zooms() == source.header.get_zooms()
    for index in range(2):
        frame_mask = np.asarray(nib.load(tmp_path / 'frames_out' / f'heart_phase{index:02d}.nii.gz').dataobj)
        assert np.array_equal(np.asarray(mask.dataobj)[..., index], frame_mask), f'phase {index}'
    rows = [(tmp_path / out / 'function.csv').read_text() for out in ('frames_out', 'cine_out')]
    assert rows[0] == rows[1] and rows[0].splitlines()[1].startswith('heart,heart_phase')


def test_a_cine_input_is_scored_phase_by_phase_against_its_4d_reference(
    trained, small_dataset_template, tmp_path, capsys
):
    frames, cine = cine_inputs(small_dataset_template, tmp_path)
    labels = {'frames': tmp_path / 'frame_labels', 'cine': tmp_path / 'cine_labels'}
    references = [
        np.asarray(nib.load(small_dataset_template / 'labelsTr' / f'synthetic_00{i}.nii.gz').dataobj) for i in (0, 1)
    ]
    affine = nib.load(cine / 'heart.nii.gz').affine
    for folder in labels.values():
        folder.mkdir()
    for index, reference in enumerate(references):
        nib.save(nib.Nifti1Image(reference, affine), labels['frames'] / f'heart_phase{index:02d}.nii.gz')
    nib.save(nib.Nifti1Image(np.stack(references, axis=3), affine), labels['cine'] / 'heart.nii.gz')
    for name, inputs in (('frames', frames), ('cine', cine)):
        argv = ['--checkpoint', str(trained), '--input', str(inputs), '--output', str(tmp_path / f'{name}_out')]
        assert run_cli(predict_main, [*argv, '--labels', str(labels[name]), '--structures', 'LV=1']) == 0
    for table in ('metrics.csv', 'function_reference.csv', 'function_agreement.csv'):
        expected, found = ((tmp_path / f'{name}_out' / table).read_text() for name in ('frames', 'cine'))
        assert found == expected, table
    three_phases = tmp_path / 'three_phases'
    three_phases.mkdir()
    nib.save(nib.Nifti1Image(np.stack([*references, references[0]], axis=3), affine), three_phases / 'heart.nii.gz')
    argv = ['--checkpoint', str(trained), '--input', str(cine), '--output', str(tmp_path / 'refused')]
    capsys.readouterr()
    assert run_cli(predict_main, [*argv, '--labels', str(three_phases)]) == EXIT_USER_ERROR
    error = capsys.readouterr().err.strip()
    assert error == f'error: {three_phases / "heart.nii.gz"}: holds 3 phases; its cine scan heart.nii.gz has 2'
    assert not (tmp_path / 'refused').exists()


def test_the_report_draws_a_cine_series_volume_curve_and_bland_altman_against_references(tmp_path):
    masks, references = {}, {}
    for index, a in enumerate((25.0, 17.0, 21.0)):
        labels, affine = phantom({'a': a, 't': 8.0, 'r': 45.0}, (3.0, 3.0, 10.0))
        for table, shrink in ((masks, 0), (references, 1)):
            path = tmp_path / f'{"ref" if shrink else "pred"}_cine_phase{index:02d}.nii.gz'
            nib.save(nib.Nifti1Image(np.where(labels == 3, 3 - shrink * (index == 1), labels), affine), path)
            table[f'cine_phase{index:02d}'] = path
    lines, page = write_function_report(tmp_path, masks, references, ACDC)
    assert set(page) == set(masks) and all(
        fields['LVEF_pct'] == page['cine_phase00']['LVEF_pct'] for fields in page.values()
    )
    assert lines[0].startswith('Cardiac function: 1 patient(s)')
    for picture in (tmp_path / 'function_curves' / 'cine.png', tmp_path / 'function_bland_altman.png'):
        assert picture.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', picture
    (row,) = csv.DictReader((tmp_path / 'function.csv').read_text().splitlines())
    assert (row['ed'], row['es']) == ('cine_phase00', 'cine_phase01')


def test_qc_judges_an_end_systolic_lv_by_its_training_range_not_its_median():
    """ACDC's training frames hold both phases: an LV at 0.3x the median is normal there, and flagged only where
    the training cases never came near it (or, without training volumes, below LA2018's widened range)."""
    measures = {
        'volume_ml': 18.0,
        'volume_ratio': 0.3,
        'tta_agreement': 0.95,
        'model_agreement': math.nan,
        'confidence': 0.95,
        'removed_fraction': 0.0,
        'edge_contact_mm2': 0.0,
        'edge_limit_mm2': 150.0,
        'edge': '',
    }
    cine_training = [20.0, 35.0, 60.0, 90.0, 150.0]  # end-systoles and end-diastoles, median 60 ml
    low, high = volume_ratio_range(cine_training)
    assert (low, high) == (0.22, 3.75)
    assert out_of_range({**measures, 'volume_ratio_low': low, 'volume_ratio_high': high}, SEVERAL_STRUCTURES) == []
    narrow = volume_ratio_range([55.0, 60.0, 150.0])  # end-diastoles only
    reasons = out_of_range(
        {**measures, 'volume_ratio_low': narrow[0], 'volume_ratio_high': narrow[1]}, SEVERAL_STRUCTURES
    )
    assert reasons == ['volume 0.3x the training median'] and narrow == (0.61, 3.75)
    assert volume_ratio_range([]) == VOLUME_RATIO_RANGE and out_of_range(measures, SEVERAL_STRUCTURES) == []
