"""Benchmark tooling: the loader profile and the dataset subset that travels to a GPU machine."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from benchmarks import benchmark, compare_runs, dataset_subset, derived_sets, postprocessing_arms
from benchmarks.loader_profile import INTENSITY, SPATIAL
from heartseg.data.dataset import read_dataset
from heartseg.errors import EXIT_USER_ERROR, run_cli


def test_loader_profile_reports_each_worker_count_and_every_transform(small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    argv = [
        'loader',
        '--data',
        str(small_dataset),
        '--cases',
        '2',
        '--steps',
        '2',
        '--workers',
        '0',
        '1',
        '--repeats',
        '1',
        '--',
        '--patch-size',
        '16',
        '16',
        '8',
        '--levels',
        '2',
    ]
    assert run_cli(benchmark.main, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row['workers'] for row in report['loader']] == [0, 1]
    assert all(row['patches_per_s'] > 0 and row['user_s'] + row['system_s'] > 0 for row in report['loader'])
    shares = report['share_of_time']
    assert set(shares) == {'label-balanced corners and the one-hot target', SPATIAL, INTENSITY}
    assert abs(sum(shares.values()) - 1) < 0.01, shares
    assert (torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()) == threads, (
        'the profile must restore the thread pools'
    )


def test_feed_measures_every_augmentation_place_at_every_worker_count(small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [
        'feed',
        '--data',
        str(small_dataset),
        '--cases',
        '2',
        '--steps',
        '1',
        '--workers',
        '0',
        '1',
        '--repeats',
        '1',
        '--',
        '--patch-size',
        '16',
        '16',
        '8',
        '--levels',
        '2',
    ]
    assert run_cli(benchmark.main, argv) == 0
    rows = json.loads(capsys.readouterr().out)['rows']
    assert [(row['augment_on'], row['workers']) for row in rows] == [
        ('loader', 0),
        ('loader', 1),
        ('device', 0),
        ('device', 1),
    ]
    assert all(row['model_patches_per_s'] > 0 and row['end_to_end_patches_per_s'] > 0 for row in rows)
    assert all(('device_augmentation_patches_per_s' in row) == (row['augment_on'] == 'device') for row in rows)


def test_subset_copies_the_leading_cases_that_fit_byte_for_byte(small_dataset, tmp_path, capsys):
    cases = read_dataset(small_dataset).cases
    budget = sum(c.image.stat().st_size + c.label.stat().st_size for c in cases[:3]) + 1
    output = tmp_path / 'subset'
    assert (
        run_cli(
            dataset_subset.main,
            ['--data', str(small_dataset), '--output', str(output), '--max-mib', str(budget / 2**20)],
        )
        == 0
    )
    subset = read_dataset(output).cases
    assert [c.case_id for c in subset] == [c.case_id for c in cases[:3]]
    for copied, source in zip(subset, cases):
        assert (
            copied.image.read_bytes() == source.image.read_bytes()
            and copied.label.read_bytes() == source.label.read_bytes()
        )
    assert json.loads(capsys.readouterr().out)['cases'] == 3


def test_a_budget_that_holds_no_case_is_one_line_and_writes_nothing(small_dataset, tmp_path, capsys):
    output = tmp_path / 'subset'
    assert (
        run_cli(dataset_subset.main, ['--data', str(small_dataset), '--output', str(output), '--max-mib', '0.0001'])
        == EXIT_USER_ERROR
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and '--max-mib' in errors[0] and 'holds no case' in errors[0], errors
    assert not Path(output).exists()


def test_a_missing_images_folder_or_monai_is_one_line(trained, small_dataset, tmp_path, monkeypatch, capsys):
    argv = ['ensemble', '--checkpoint', str(trained), '--images', str(tmp_path / 'absent'), '--labels', str(tmp_path)]
    assert run_cli(benchmark.main, argv) == EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == f'error: {tmp_path / "absent"}: not a folder of NIfTI scans'
    monkeypatch.setitem(sys.modules, 'monai', None)  # makes `import monai` fail, as where it is not installed
    assert (
        run_cli(benchmark.main, ['predict', '--checkpoint', str(trained), '--data', str(small_dataset)])
        == EXIT_USER_ERROR
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and 'pip install -r requirements-bench.txt' in errors[0], errors
    assert torch.is_grad_enabled(), 'a benchmark must not leave grad mode off for what runs next'


def test_every_damaged_copy_keeps_its_label_on_the_image_s_grid():
    import torchio as tio

    from benchmarks.degraded_set import DAMAGES, variants

    image = torch.rand(1, 24, 20, 16) * 100
    label = torch.zeros(1, 24, 20, 16, dtype=torch.uint8)
    label[0, 6:18, 5:15, 3:13] = 1
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=image, affine=affine), label=tio.LabelMap(tensor=label, affine=affine)
    )
    damaged = dict(variants(subject, 'case'))
    assert len(damaged) == 1 + sum(len(strengths) for _, strengths in DAMAGES.values())
    for name, copy in damaged.items():
        assert copy['image'].shape == copy['label'].shape and np.allclose(copy['image'].affine, copy['label'].affine), (
            name
        )
        assert copy['label'].data.any(), f'{name} lost the structure'
    assert damaged['case__slices2']['image'].spacing[2] == pytest.approx(8 * 2.0), (
        "slices 8 times as far apart as the scan's own"
    )
    assert damaged['case__inplane2']['image'].spacing[:2] == pytest.approx((4.0, 4.0))
    assert damaged['case__fov2']['label'].data.any(dim=(0, 1, 2)).sum() == 10 - 4, 'the cut removes 40 % of the extent'
    assert not torch.equal(damaged['case__noise1']['image'].data, image)


def test_the_risk_coverage_area_orders_oracle_below_random_and_auroc_is_one_for_a_perfect_score():
    from benchmarks.qc_fit import aurc, auroc

    true = np.array([0.95, 0.9, 0.5, 0.2])
    risk = 1 - true
    assert aurc(true, risk) < risk.mean() < aurc(-true, risk)
    assert auroc(true, true < 0.8) == 1.0 and auroc(-true, true < 0.8) == 0.0


def test_the_qc_fit_keeps_a_patient_s_frames_and_their_damaged_copies_on_one_side():
    from benchmarks.qc_fit import split

    cases = [
        {'case': f'patient{p:03d}_frame{f:02d}__{d}', 'source': f'patient{p:03d}_frame{f:02d}'}
        for p in range(1, 7)
        for f in (1, 12)
        for d in ('clean', 'noise2')
    ]
    fitting, held_out = split(cases)
    patients = lambda group: {c['source'][:10] for c in group}  # noqa: E731
    assert len(patients(fitting)) == len(patients(held_out)) == 3
    assert not patients(fitting) & patients(held_out)


def test_the_three_structure_split_cuts_across_the_long_axis_in_millimetres():
    """An oblique rod, long in mm only because its voxels are anisotropic: the ends are its two quarters."""
    mask = np.zeros((12, 40, 12), bool)
    mask[4:8, :, 4:8] = True
    affine = np.diag([3.0, 0.5, 3.0, 1.0])  # 36 x 20 x 36 mm: the rod's 20 mm length is still its longest extent
    labels = derived_sets.split_along_principal_axis(mask, affine)
    assert np.array_equal(labels > 0, mask)
    along = {value: np.nonzero(labels == value)[1] for value in (1, 2, 3)}
    assert {value: len(y) // (4 * 4) for value, y in along.items()} == {1: 20, 2: 10, 3: 10}
    assert along[2].max() < along[1].min() and along[1].max() < along[3].min(), 'body between the two ends'


def test_derived_datasets_keep_labels_on_their_images_grid(small_dataset, tmp_path):
    three, thick = tmp_path / 'Dataset101_Three', tmp_path / 'Thick'
    assert run_cli(derived_sets.main, ['three-structures', '--data', str(small_dataset), '--output', str(three)]) == 0
    assert (
        run_cli(
            derived_sets.main,
            ['thick-slices', '--data', str(small_dataset), '--output', str(thick), '--thickness', '9'],
        )
        == 0
    )
    spec = read_dataset(three)
    assert spec.layout == 'nnunet_v2' and len(spec.cases) == 6 and sorted(spec.labels) == [0, 1, 2, 3]
    thick_spec = read_dataset(thick)
    for case in thick_spec.cases:
        image, label = nib.load(case.image), nib.load(case.label)
        assert image.shape == label.shape and np.allclose(image.affine, label.affine)
        assert nib.affines.voxel_sizes(image.affine)[2] == pytest.approx(9.0)
        assert np.asanyarray(label.dataobj).any()


def test_the_post_processing_arms_score_each_arm_on_the_same_masks(trained, tmp_path, capsys):
    """A stray piece far from the structure: every arm that keeps largest components removes it, 'none' keeps it."""
    reference = np.zeros((24, 24, 12), np.uint8)
    reference[4:12, 4:12, 2:8] = 1
    predicted = reference.copy()
    predicted[20:23, 20:23, 9:11] = 1
    for folder, mask in (('predictions', predicted), ('labels', reference)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(mask, np.diag([1.5, 1.5, 10, 1])), tmp_path / folder / 'case.nii.gz')
    argv = ['--checkpoint', str(trained), '--output', str(tmp_path / 'arms')]
    argv += ['--predictions', str(tmp_path / 'predictions'), '--labels', str(tmp_path / 'labels')]
    assert run_cli(postprocessing_arms.main, argv) == 0
    scores = {
        arm: compare_runs.read_scores(tmp_path / 'arms' / arm)[('case', 'mean')]['dice']
        for arm in ('none', 'every-structure', 'all-together', 'all-together-then-every-structure')
    }
    assert scores['none'] == pytest.approx(2 * 384 / (2 * 384 + 18))
    assert scores['every-structure'] == scores['all-together'] == scores['all-together-then-every-structure'] == 1
    assert 'all-together' in capsys.readouterr().out


def test_time_to_quality_trains_one_schedule_per_budget_and_reads_a_scored_budget_again(
    small_dataset, tmp_path, capsys
):
    from conftest import TINY_NET

    from benchmarks import holdout, time_to_quality

    assert (
        run_cli(holdout.main, ['--data', str(small_dataset), '--patients', '2', '--output', str(tmp_path / 'h')]) == 0
    )
    output = tmp_path / 'ttq'
    argv = ['--data', str(tmp_path / 'h' / 'train'), '--test', str(tmp_path / 'h' / 'test'), '--minutes', '0.1', '0.05']
    argv += ['--output', str(output), '--', *TINY_NET, '--steps-per-epoch', '2', '--cache-dir', str(tmp_path / 'c')]
    assert run_cli(time_to_quality.main, argv) == 0, capsys.readouterr().err
    rows = list(csv.DictReader((output / 'time_to_quality.csv').read_text().splitlines()))
    assert [float(row['minutes']) for row in rows] == [0.05, 0.1]
    for row in rows:
        config = json.loads((output / f'{float(row["minutes"]):g}min' / 'config.json').read_text())['config']
        assert config['time_limit'] == float(row['minutes']) and config['val_fraction'] == 0
        assert int(row['steps']) % 2 == 0 and int(row['steps']) >= 2 and row['cases'] == '2'
        assert 0 <= float(row['mean_dice']) <= 1
    assert (output / 'time_to_quality.png').stat().st_size > 0
    trained = (output / '0.05min' / 'best.pt').stat().st_mtime_ns
    assert run_cli(time_to_quality.main, argv) == 0
    assert (output / '0.05min' / 'best.pt').stat().st_mtime_ns == trained, 'a scored budget is read, not trained again'
    argv[argv.index('--test') + 1] = str(tmp_path / 'absent')
    assert run_cli(time_to_quality.main, argv) == EXIT_USER_ERROR
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith('not a folder; --test takes a benchmarks.holdout test folder (images/, labels/)')
    )
