"""analyze_data.py: exact statistics on known volumes, every planted problem
reported with its case, valid figures, and one-line errors for bad input."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from analyze_data import main
from heartseg.analysis.cases import CaseTask, analyze_case
from heartseg.data.cases import Case
from heartseg.data.synthetic import write_synthetic_dataset
from heartseg.errors import EXIT_USER_ERROR, run_cli

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
FIGURES = ('intensity_histograms.png', 'spacing_shape.png', 'structure_volumes.png', 'montage.png')

# Known volume: stored axis 0 runs anterior (1 mm), axis 1 runs left (2 mm),
# axis 2 superior (2.5 mm), so the canonical (RAS) grid is 20 x 16 x 10.
KNOWN_AFFINE = np.array([[0, -2.0, 0, 10], [1.0, 0, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
CANONICAL_SHAPE = (20, 16, 10)
VOXEL_MM3 = 2.0 * 1.0 * 2.5
CUBE_1 = (slice(4, 8), slice(2, 6), slice(3, 7))  # 64 voxels of label 1
CUBE_2 = (slice(12, 14), slice(10, 12), slice(1, 3))  # 8 voxels of label 2


def run(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    code = run_cli(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.startswith('error:')]


def to_stored(canonical: np.ndarray) -> np.ndarray:
    """Canonical (x, y, z) array to KNOWN_AFFINE's stored (anterior, left, superior) order."""
    return canonical[::-1].transpose(1, 0, 2)


def known_volumes() -> tuple[np.ndarray, np.ndarray]:
    """Canonical image and label: background 10, label 1 cube at 110, label 2 cube at 210."""
    image = np.full(CANONICAL_SHAPE, 10.0, dtype=np.float32)
    label = np.zeros(CANONICAL_SHAPE, dtype=np.uint8)
    for value, cube in ((1, CUBE_1), (2, CUBE_2)):
        image[cube], label[cube] = 10.0 + 100 * value, value
    return image, label


def write_known_dataset(root: Path) -> Path:
    image, label = known_volumes()
    training = []
    for case_id in ('known_a', 'known_b'):
        for folder, data in (('imagesTr', image), ('labelsTr', label)):
            nifti = nib.Nifti1Image(to_stored(data), KNOWN_AFFINE)
            # The test's own geometry must be right before it can judge the analyzer.
            assert np.array_equal(np.asarray(nib.as_closest_canonical(nifti).dataobj), data)
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nifti, root / folder / f'{case_id}.nii.gz')
        training.append({'image': f'./imagesTr/{case_id}.nii.gz', 'label': f'./labelsTr/{case_id}.nii.gz'})
    description = {
        'name': 'Known',
        'modality': {'0': 'MRI'},
        'labels': {'0': 'background', '1': 'big', '2': 'small'},
        'training': training,
    }
    (root / 'dataset.json').write_text(json.dumps(description))
    return root


def read_outputs(output: Path) -> tuple[dict, list[dict[str, str]]]:
    with open(output / 'cases.csv', newline='') as handle:
        return json.loads((output / 'fingerprint.json').read_text()), list(csv.DictReader(handle))


def test_statistics_match_known_volumes(tmp_path, capsys):
    root = write_known_dataset(tmp_path / 'Known')
    code, out, errors = run([str(root), '--workers', '1'], capsys)
    assert code == 0 and not errors
    fingerprint, rows = read_outputs(root / 'analysis')
    case = fingerprint['cases'][0]
    assert case['shape'] == [20, 16, 10] and case['spacing'] == [2.0, 1.0, 2.5]
    assert case['orientation'] == 'ALS' and case['dtype'] == 'float32'
    assert case['volume_ml'] == pytest.approx({'1': 64 * VOXEL_MM3 / 1000, '2': 8 * VOXEL_MM3 / 1000})
    assert case['foreground_fraction'] == pytest.approx(72 / 3200)
    assert case['foreground_bbox'] == [[4, 14], [2, 12], [1, 7]]
    image, label = known_volumes()
    foreground = image[label > 0]
    assert case['intensity']['image'] == pytest.approx(
        {
            'min': 10,
            'max': 210,
            'mean': 12.5,
            'std': image.std(dtype=np.float64),
            'p0.5': np.percentile(image, 0.5),
            'p99.5': np.percentile(image, 99.5),
        }
    )
    assert case['intensity']['foreground'] == pytest.approx(
        {
            'min': 110,
            'max': 210,
            'mean': (64 * 110 + 8 * 210) / 72,
            'std': foreground.std(dtype=np.float64),
            'p0.5': np.percentile(foreground, 0.5),
            'p99.5': np.percentile(foreground, 99.5),
        }
    )
    assert fingerprint['labels']['1']['voxel_fraction'] == pytest.approx(64 / 3200)
    assert fingerprint['labels']['2']['volume_ml']['median'] == pytest.approx(0.04)
    assert fingerprint['plan']['target_spacing'] == [2.0, 1.0, 2.5]
    assert fingerprint['problems'] == []
    assert (
        rows[0]['shape_x'] == '20'
        and rows[0]['bbox_z_stop'] == '7'
        and float(rows[0]['volume_ml_1']) == pytest.approx(0.32)
    )
    assert 'Integrity: no problems found' in out


def test_clean_run_writes_valid_figures_and_tables(small_dataset, tmp_path, capsys):
    output = tmp_path / 'report'
    code, out, errors = run([str(small_dataset), '--output', str(output), '--workers', '2'], capsys)
    assert code == 0 and not errors
    fingerprint, rows = read_outputs(output)
    assert [row['case_id'] for row in rows] == [f'synthetic_{i:03d}' for i in range(6)]
    assert fingerprint['dataset']['training_cases'] == 6
    for name in FIGURES:
        path = output / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as png:
            png.verify()
        assert matplotlib.image.imread(path).ndim == 3, name
    assert sorted(p.name for p in output.iterdir()) == sorted(
        [*FIGURES, 'cases.csv', 'fingerprint.json', 'report.txt']
    ), 'temporary files left behind'
    assert (output / 'report.txt').read_text().strip() in out


def rewrite(path: Path, change) -> None:
    image = nib.load(path)
    data, affine = change(np.asarray(image.dataobj), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def set_voxel(value):
    def change(data, affine):
        data = data.astype(np.float32 if np.isnan(value) or np.isinf(value) or value % 1 else data.dtype)
        data[0, 0, 0] = value
        return data, affine

    return change


def stretch_x(data, affine):
    affine[:3, 0] *= 3
    return data, affine


def shift(data, affine):
    affine[:3, 3] += 5.0
    return data, affine


def edit_json(root: Path, change) -> None:
    path = root / 'dataset.json'
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def image_of(root: Path, index: int) -> Path:
    return root / 'imagesTr' / f'synthetic_{index:03d}.nii.gz'


def label_of(root: Path, index: int) -> Path:
    return root / 'labelsTr' / f'synthetic_{index:03d}.nii.gz'


def plant_missing_grid_values_spacing_duplicate(root: Path) -> None:
    image_of(root, 0).unlink()
    rewrite(label_of(root, 0), set_voxel(7))
    rewrite(label_of(root, 1), lambda data, affine: (data[:-2], affine))
    rewrite(image_of(root, 2), set_voxel(np.nan))
    rewrite(label_of(root, 2), set_voxel(7))
    rewrite(label_of(root, 3), lambda data, affine: (np.zeros_like(data), affine))
    rewrite(image_of(root, 4), stretch_x)
    rewrite(label_of(root, 4), stretch_x)
    edit_json(root, lambda content: content['training'].append(dict(content['training'][5])))


def plant_unreadable_dimensions_affine_inf(root: Path) -> None:
    image_of(root, 0).write_bytes(image_of(root, 0).read_bytes()[:2000])
    image_of(root, 1).write_bytes(gzip.compress(b'garbage' * 100))
    rewrite(label_of(root, 2), shift)
    rewrite(image_of(root, 3), lambda data, affine: (np.stack([data, data], axis=-1), affine))
    rewrite(label_of(root, 4), lambda data, affine: (data[:, :, 0], affine))
    rewrite(image_of(root, 5), set_voxel(np.inf))
    rewrite(label_of(root, 5), lambda data, affine: (data.astype(np.float32) * 0.5, affine))


PLANTED = {
    'missing, grid, values, spacing, duplicate': (
        plant_missing_grid_values_spacing_duplicate,
        {
            ('synthetic_000', 'missing_file'),
            ('synthetic_000', 'undeclared_label'),
            ('synthetic_001', 'grid_mismatch'),
            ('synthetic_002', 'non_finite'),
            ('synthetic_002', 'undeclared_label'),
            ('synthetic_003', 'empty_label'),
            ('synthetic_004', 'spacing_outlier'),
            ('synthetic_005', 'duplicate_entry'),
        },
    ),
    'unreadable, dimensions, affine, inf': (
        plant_unreadable_dimensions_affine_inf,
        {
            ('synthetic_000', 'unreadable_file'),
            ('synthetic_001', 'unreadable_file'),
            ('synthetic_002', 'grid_mismatch'),
            ('synthetic_003', 'not_3d'),
            ('synthetic_004', 'not_3d'),
            ('synthetic_005', 'non_finite'),
            ('synthetic_005', 'non_integer_label'),
        },
    ),
}


@pytest.mark.parametrize('name', list(PLANTED))
def test_every_planted_problem_is_reported_with_its_case(name, small_dataset, tmp_path, capsys):
    plant, expected = PLANTED[name]
    plant(small_dataset)
    output = tmp_path / 'report'
    code, out, errors = run([str(small_dataset), '--output', str(output), '--workers', '1'], capsys)
    assert code == EXIT_USER_ERROR and not errors
    fingerprint, rows = read_outputs(output)
    assert {(p['case_id'], p['kind']) for p in fingerprint['problems']} == expected
    for case_id, kind in expected:
        assert any(line.split()[:2] == [case_id, kind] for line in out.splitlines()), (
            f'{case_id} {kind} not in the printed report'
        )
    flagged = {row['case_id'] for row in rows if row['problems']}
    assert flagged == {case_id for case_id, _ in expected}
    assert all((output / name).is_file() for name in FIGURES)


def test_an_empty_label_and_a_spacing_outlier_are_listed_as_warnings_and_do_not_fail_the_run(
    small_dataset, tmp_path, capsys
):
    """Training takes both cases (one as background only, one resampled like the rest), so the check must pass too."""
    rewrite(label_of(small_dataset, 3), lambda data, affine: (np.zeros_like(data), affine))
    rewrite(image_of(small_dataset, 4), stretch_x)
    rewrite(label_of(small_dataset, 4), stretch_x)
    output = tmp_path / 'report'
    code, out, errors = run([str(small_dataset), '--output', str(output), '--workers', '1'], capsys)
    assert code == 0 and not errors
    fingerprint, _ = read_outputs(output)
    assert [(p['case_id'], p['kind']) for p in fingerprint['problems']] == [
        ('synthetic_003', 'empty_label'),
        ('synthetic_004', 'spacing_outlier'),
    ]
    assert 'synthetic_003  empty_label' in out and 'synthetic_004  spacing_outlier' in out


def test_test_split_and_shared_files_are_checked(small_dataset, tmp_path, capsys):
    (small_dataset / 'imagesTs').mkdir()
    shutil.copy(image_of(small_dataset, 1), small_dataset / 'imagesTs' / 'unseen.nii.gz')
    shutil.copy(image_of(small_dataset, 2), small_dataset / 'imagesTs' / 'synthetic_002.nii.gz')

    def change(content):
        content['test'] = ['./imagesTs/unseen.nii.gz', './imagesTs/synthetic_002.nii.gz']
        content['training'][3]['label'] = content['training'][4]['label']

    edit_json(small_dataset, change)
    output = tmp_path / 'report'
    code, _, _ = run([str(small_dataset), '--output', str(output), '--workers', '1'], capsys)
    assert code == EXIT_USER_ERROR
    fingerprint, rows = read_outputs(output)
    assert {(p['case_id'], p['kind']) for p in fingerprint['problems']} == {
        ('synthetic_002', 'duplicate_entry'),
        ('synthetic_003', 'duplicate_entry'),
        ('synthetic_003', 'grid_mismatch'),
    }
    test_rows = [row for row in rows if row['split'] == 'test']
    assert [row['case_id'] for row in test_rows] == ['unseen', 'synthetic_002']
    assert all(row['image_mean'] and not row['volume_ml_1'] for row in test_rows)
    assert fingerprint['dataset']['test_cases'] == 2


def missing_labels_key(root: Path) -> None:
    edit_json(root, lambda content: content.pop('labels'))


def block_default_output(root: Path) -> None:
    (root / 'analysis').write_text('a file where the report folder would go')


BAD_INPUTS = {
    'invalid JSON': (lambda root: (root / 'dataset.json').write_text('{"labels": '), 'dataset.json: invalid JSON'),
    'missing key': (missing_labels_key, 'dataset.json: missing required key "labels"'),
    'unwritable default output': (block_default_output, 'pass --output'),
}


@pytest.mark.parametrize('name', list(BAD_INPUTS))
def test_bad_input_is_one_line_error(name, small_dataset, capsys):
    corrupt, expected = BAD_INPUTS[name]
    corrupt(small_dataset)
    code, out, errors = run([str(small_dataset)], capsys)
    assert code == EXIT_USER_ERROR
    assert len(errors) == 1 and expected in errors[0], errors
    assert 'Integrity' not in out, 'nothing is analysed after a fatal error'


def test_help_shows_example_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert 'Example:' in text and 'python analyze_data.py' in text and '(default: 2)' in text


def test_real_cases_match_nibabel(la2018):
    """Spot check: two LA2018 cases measured directly with nibabel."""
    for case_id in ('A4R1S23KR0KU2WSYHK2X', 'EJ5V7SPR4961JWD6SS8V'):
        case = Case(case_id, la2018 / 'imagesTr' / f'{case_id}.nii.gz', la2018 / 'labelsTr' / f'{case_id}.nii.gz')
        result = analyze_case(CaseTask(case, 'training', (0, 1), 1, la2018))
        image, label = nib.load(case.image), np.asarray(nib.load(case.label).dataobj)
        voxels = image.get_fdata()
        assert result.problems == []
        assert result.header.shape == image.shape and result.header.spacing == pytest.approx(image.header.get_zooms())
        assert result.volumes_ml[1] == pytest.approx(np.count_nonzero(label) * np.prod(image.header.get_zooms()) / 1000)
        assert result.foreground_stats['mean'] == pytest.approx(voxels[label > 0].mean(), rel=1e-5)
        assert result.image_stats['p99.5'] == pytest.approx(np.percentile(voxels, 99.5), rel=1e-5)


def test_an_nnunet_v2_folder_is_analysed_like_an_msd_one(tmp_path, capsys):
    """The same cases, written in both layouts, give the same statistics and plan; thick slices show in the plan."""
    kwargs = {'num_cases': 3, 'shape': (40, 40, 6), 'spacing': (1.5, 1.5, 10.0), 'structures': 3, 'test_cases': 1}
    msd = write_synthetic_dataset(tmp_path / 'Msd', **kwargs)
    v2 = write_synthetic_dataset(tmp_path / 'Dataset002_Heart', layout='nnunet_v2', **kwargs)
    results = {}
    for root in (msd, v2):
        code, out, errors = run([str(root), '--workers', '1'], capsys)
        assert code == 0 and not errors, errors
        results[root] = read_outputs(root / 'analysis')
    (msd_fingerprint, msd_rows), (v2_fingerprint, v2_rows) = results[msd], results[v2]
    assert (
        [row['case_id'] for row in v2_rows]
        == [row['case_id'] for row in msd_rows]
        == [f'synthetic_{i:03d}' for i in range(4)]
    )
    for key in ('labels', 'plan', 'geometry'):
        assert v2_fingerprint[key] == msd_fingerprint[key], key
    # Six 10 mm slices are never 8 long, so nnU-Net's rule never pools them; 40 voxels in plane pool three times.
    assert v2_fingerprint['plan']['pool_sizes'] == [[2, 2, 1], [2, 2, 1], [2, 2, 1]]
    assert 'network pooling per level (3 levels): 2x2x1, 2x2x1, 2x2x1' in out
    assert 'Patients: seeded splits go case by case' in out
