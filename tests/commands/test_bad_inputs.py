"""Every bad input gives one line naming the file and the problem, exit code 2,
and leaves no run folder or half-written output behind: in main.py and predict.py
(analyze_data.py has its own corpus in test_analyze_data.py)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ONE_STEP, TINY_NET, error_lines, flatten_sform, scoring_command

from heartseg.errors import EXIT_USER_ERROR, run_cli
from main import main
from predict import main as predict_main

FIRST = 'synthetic_000'


def image_path(root: Path, case: str = FIRST) -> Path:
    return root / 'imagesTr' / f'{case}.nii.gz'


def label_path(root: Path, case: str = FIRST) -> Path:
    return root / 'labelsTr' / f'{case}.nii.gz'


def rewrite(path: Path, change) -> None:
    image = nib.load(path)
    data, affine = change(np.asarray(image.dataobj), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def edit_json(root: Path, change) -> None:
    path = root / 'dataset.json'
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def set_first_entry(key: str, value: str):
    return lambda content: content['training'][0].__setitem__(key, value)


def duplicate_first(content: dict) -> None:
    content['training'].append(dict(content['training'][0]))


def with_nan(data, affine):
    data = data.astype(np.float32)
    data[0, 0, 0] = np.nan
    return data, affine


def with_inf(data, affine):
    data = data.astype(np.float32)
    data[1, 2, 3] = np.inf
    return data, affine


def with_float_label(data, affine):
    return data.astype(np.float32) * 0.5, affine


def with_undeclared_label(data, affine):
    data = data.copy()
    data[0, 0, 0] = 7
    return data, affine


def cropped(data, affine):
    return data[:-2], affine


def shifted(data, affine):
    affine[:3, 3] += 5.0
    return data, affine


def four_dimensional(data, affine):
    return np.stack([data, data], axis=-1), affine


def two_dimensional(data, affine):
    return data[:, :, 0], affine


BAD_INPUTS = {
    'missing image': (lambda r: image_path(r).unlink(), FIRST, 'file not found'),
    'missing label': (lambda r: label_path(r).unlink(), FIRST, 'file not found'),
    'truncated image': (lambda r: truncate(image_path(r)), FIRST, 'truncated or corrupt'),
    'not gzip or NIfTI': (
        lambda r: image_path(r).write_bytes(b'this is not an image' * 20),
        FIRST,
        'not a readable NIfTI',
    ),
    'zero-byte file': (lambda r: image_path(r).write_bytes(b''), FIRST, 'empty'),
    'gzip of garbage': (
        lambda r: image_path(r).write_bytes(gzip.compress(b'garbage' * 100)),
        FIRST,
        'not a readable NIfTI',
    ),
    'shape mismatch': (lambda r: rewrite(label_path(r), cropped), FIRST, 'does not match image'),
    'affine mismatch': (lambda r: rewrite(label_path(r), shifted), FIRST, 'affine does not match'),
    'undeclared label': (lambda r: rewrite(label_path(r), with_undeclared_label), FIRST, 'not declared'),
    'float label': (lambda r: rewrite(label_path(r), with_float_label), FIRST, 'must be integers'),
    'NaN voxels': (lambda r: rewrite(image_path(r), with_nan), FIRST, 'NaN or Inf'),
    'Inf voxels': (lambda r: rewrite(image_path(r), with_inf), FIRST, 'NaN or Inf'),
    '4D image': (lambda r: rewrite(image_path(r), four_dimensional), FIRST, 'expected a 3D image'),
    '2D image': (lambda r: rewrite(image_path(r), two_dimensional), FIRST, 'expected a 3D image'),
    'invalid JSON': (lambda r: (r / 'dataset.json').write_text('{"labels": '), 'dataset.json', 'invalid JSON'),
    'missing key': (lambda r: edit_json(r, lambda c: c.pop('labels')), 'dataset.json', 'missing required key "labels"'),
    'duplicate case': (lambda r: edit_json(r, duplicate_first), 'dataset.json', 'listed twice'),
    'path escapes': (
        lambda r: edit_json(r, set_first_entry('image', '../../etc/passwd')),
        'dataset.json',
        'escapes the dataset folder',
    ),
    'absolute path': (lambda r: edit_json(r, set_first_entry('label', '/etc/passwd')), 'dataset.json', 'absolute path'),
    'no dataset.json': (lambda r: (r / 'dataset.json').unlink(), 'dataset.json', 'not found'),
    'label value over 255': (
        lambda r: edit_json(r, lambda c: c['labels'].update({'300': 'too high'})),
        'dataset.json',
        'must be 0 to 255',
    ),
    'constant image': (
        lambda r: rewrite(image_path(r), lambda data, affine: (np.full_like(data, 3.0), affine)),
        FIRST,
        'one value in every voxel',
    ),
    'singular affine': (lambda r: flatten_sform(image_path(r)), FIRST, 'affine (sform/qform) is not invertible'),
}


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    return run_cli(main, argv), error_lines(capsys)


@pytest.mark.parametrize('name', list(BAD_INPUTS))
def test_bad_input_gives_one_line_error(name, small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    corrupt, names, problem = BAD_INPUTS[name]
    corrupt(small_dataset)
    run_dir = tmp_path / 'runs' / 'bad'
    code, errors = run_main(['--data', str(small_dataset), '--run-dir', str(run_dir), '--epochs', '1'], capsys)
    assert code == EXIT_USER_ERROR
    assert len(errors) == 1, errors
    assert names in errors[0] and problem in errors[0], errors[0]
    assert not run_dir.exists(), 'a failed start must not leave a run folder'


def test_unwritable_run_dir_is_detected_before_training(small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('a file where a folder should be')
    code, errors = run_main(['--data', str(small_dataset), '--run-dir', str(blocker / 'run'), '--epochs', '1'], capsys)
    assert code == EXIT_USER_ERROR
    assert len(errors) == 1 and 'not writable' in errors[0] and str(blocker) in errors[0]


def test_resume_with_incompatible_architecture_is_refused(small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    argv = ['--data', str(small_dataset), '--run-dir', str(run_dir), *ONE_STEP, *TINY_NET, '--max-cases', '3']
    assert run_cli(main, argv) == 0
    code, errors = run_main(['--resume', str(run_dir), '--levels', '3'], capsys)
    assert code == EXIT_USER_ERROR
    assert len(errors) == 1 and 'cannot resume with --levels 3' in errors[0]
    code, errors = run_main(['--resume', str(run_dir), '--data', str(tmp_path)], capsys)
    assert code == EXIT_USER_ERROR and len(errors) == 1 and 'a resumed run keeps its data' in errors[0]


@pytest.mark.parametrize(
    'content,problem',
    [
        ('{"config": ', 'invalid run config (JSONDecodeError'),
        ('[1, 2]', 'expected a JSON object with a "config" object'),
        ('{"config": "text"}', 'expected a JSON object with a "config" object'),
        ('{"config": {"target_spacing": 5}}', 'invalid run config (TypeError'),
    ],
)
def test_resume_from_a_damaged_config_json_is_a_one_line_error(tmp_path, capsys, content, problem):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / 'config.json').write_text(content)
    code, errors = run_main(['--resume', str(run_dir)], capsys)
    assert code == EXIT_USER_ERROR and len(errors) == 1 and 'config.json' in errors[0] and problem in errors[0], errors


@pytest.mark.parametrize('spacing,problem', [('1000', 'coarser than a whole case'), ('0.001', 'one case may have')])
def test_a_spacing_no_case_survives_is_refused_before_the_run_folder_exists(
    small_dataset, tmp_path, capsys, spacing, problem
):
    code, errors = run_main(
        ['--data', str(small_dataset), '--run-dir', str(tmp_path / 'run'), '--spacing', spacing], capsys
    )
    assert code == EXIT_USER_ERROR and len(errors) == 1 and '--target-spacing' in errors[0] and problem in errors[0], (
        errors
    )
    assert not (tmp_path / 'run').exists()


IMAGE_DEFECTS = {
    'missing image',
    'truncated image',
    'not gzip or NIfTI',
    'zero-byte file',
    'gzip of garbage',
    'NaN voxels',
    'Inf voxels',
    '4D image',
    '2D image',
    'constant image',
    'singular affine',
}
# predict.py finds reference labels by case id in --labels, so a missing one reads differently.
PREDICT_PROBLEMS = {'missing label': 'reference label not found'}


@pytest.mark.parametrize('name', list(BAD_INPUTS))
def test_bad_input_gives_one_line_error_in_predict(name, trained, small_dataset, tmp_path, capsys):
    corrupt, names, problem = BAD_INPUTS[name]
    corrupt(small_dataset)
    output = tmp_path / 'predictions'
    code = run_cli(predict_main, scoring_command(trained, small_dataset, output))
    errors = error_lines(capsys)
    assert code == EXIT_USER_ERROR
    assert len(errors) == 1, errors
    assert names in errors[0] and PREDICT_PROBLEMS.get(name, problem) in errors[0], errors[0]
    written = sorted(p.name for p in output.iterdir()) if output.exists() else []
    assert not [n for n in written if n.startswith('.')], f'temporary files left: {written}'
    if name in IMAGE_DEFECTS:  # a bad reference label still leaves a valid mask
        assert f'{FIRST}.nii.gz' not in written, written


def test_output_folder_without_room_is_detected_before_training(small_dataset, tmp_path):
    # A file-size limit below the 1 MiB write probe stands in for a full disk: writes fail the same way.
    script = (
        'import resource, signal, sys\n'
        'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
        'resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 19, 1 << 19))\n'
        'from heartseg.errors import run_cli\n'
        'from main import main\n'
        f'sys.exit(run_cli(main, ["--data", {str(small_dataset)!r}, '
        f'"--run-dir", {str(tmp_path / "run")!r}, "--epochs", "1"]))\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    assert (
        result.stderr.strip().splitlines()[-1]
        == f'error: {tmp_path / "run"}: output folder is not writable (File too large)'
    )
    assert not list((tmp_path / 'run').glob('*.pt'))
