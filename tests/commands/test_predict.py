"""predict.py: masks in each input's exact grid, evaluation, and clear errors."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import error_lines, prediction_command, scoring_command

from heartseg.checkpoint import load_checkpoint, save_checkpoint
from heartseg.commands.predict_flags import build_parser
from heartseg.data.reading import image_subject
from heartseg.errors import EXIT_USER_ERROR, run_cli
from heartseg.inference.postprocessing import Postprocessing
from heartseg.inference.prediction import (
    Predictor,
    back_to_input_grid,
    ensemble_probabilities,
    evaluate_case,
    write_evaluation,
)
from heartseg.inference.sliding_window import predict_logits, window_starts
from heartseg.metrics import dice
from heartseg.outputs import Outputs
from heartseg.planning.config import DEFAULT_OVERLAP
from heartseg.preprocessing.preprocessing import Preprocessing
from predict import main as predict_main


def scan(dataset: Path, case: str = 'synthetic_001') -> Path:
    return dataset / 'imagesTr' / f'{case}.nii.gz'


def save_variant(source: Path, target: Path, transform) -> Path:
    image = nib.load(source)
    data, affine = transform(np.asarray(image.dataobj), image.affine.copy())
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), target)
    return target


def flip_first_axis(data, affine):
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    return data[::-1], affine @ flip


def swap_first_axes(data, affine):
    swap = np.eye(4)[[1, 0, 2, 3]]
    return data.transpose(1, 0, 2), affine @ swap


def rotate_oblique(data, affine):
    angle = np.deg2rad(20)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return data, rotation @ affine


def predict_file(checkpoint: Path, image: Path, output: Path, *extra: str) -> nib.Nifti1Image:
    assert run_cli(predict_main, prediction_command([checkpoint], image, output, *extra)) == 0
    return nib.load(output / image.name)


def test_mask_keeps_the_input_geometry_exactly(trained, small_dataset_template, tmp_path):
    source = nib.load(scan(small_dataset_template))
    mask = predict_file(trained, scan(small_dataset_template), tmp_path)
    assert mask.shape == source.shape
    assert np.array_equal(mask.affine, source.affine)
    assert np.array_equal(mask.get_qform(), source.get_qform()) and np.array_equal(mask.get_sform(), source.get_sform())
    assert (int(mask.header['qform_code']), int(mask.header['sform_code'])) == (
        int(source.header['qform_code']),
        int(source.header['sform_code']),
    )
    assert mask.get_data_dtype() == np.uint8
    values = np.unique(np.asarray(mask.dataobj))
    assert set(values.tolist()) <= {0, 1} and 1 in values


@pytest.mark.parametrize(
    'transform,undo',
    [
        (flip_first_axis, lambda m: m[::-1]),
        (swap_first_axes, lambda m: m.transpose(1, 0, 2)),
        (rotate_oblique, lambda m: m),
    ],
)
def test_same_physical_image_gives_the_same_physical_mask(trained, small_dataset_template, tmp_path, transform, undo):
    original = predict_file(trained, scan(small_dataset_template), tmp_path / 'original')
    variant_path = save_variant(scan(small_dataset_template), tmp_path / 'variant.nii.gz', transform)
    variant = predict_file(trained, variant_path, tmp_path / 'variant')
    variant_image = nib.load(variant_path)
    assert variant.shape == variant_image.shape and np.allclose(variant.affine, variant_image.affine)
    expected = undo(np.asarray(original.dataobj))
    agreement = (np.asarray(variant.dataobj) == expected).mean()
    assert agreement > 0.999, f'only {agreement:.4%} of voxels agree'


def test_resampling_back_puts_structures_where_they_physically_are():
    """A cube predicted in a canonical 2 mm grid lands on the same mm in an LPS 1 mm input grid."""
    input_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    input_affine[:3, 3] = [
        39,
        39,
        0,
    ]  # voxel (39, 39, 0) is at the origin; axes run right-to-left, anterior-to-posterior
    nifti = nib.Nifti1Image(np.zeros((40, 40, 40), np.float32), input_affine)
    canonical_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    probabilities = torch.zeros(1, 20, 20, 20)
    probabilities[0, 5:10, 5:10, 5:10] = 1  # 10-20 mm on each axis (voxel centres)
    back = back_to_input_grid(probabilities, canonical_affine, nifti)[0].numpy() > 0.5
    world = nib.affines.apply_affine(input_affine, np.argwhere(back))
    assert world.min(0) == pytest.approx([10, 10, 10], abs=1.01)
    assert world.max(0) == pytest.approx([19, 19, 19], abs=1.01)


def test_the_boundary_keeps_its_sub_voxel_position_on_the_input_grid():
    """Logits are resampled before the sigmoid: the 0.5 crossing stays at the logits' zero crossing."""
    boundary_mm = 10.3
    coarse_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    x_mm = 2.0 * torch.arange(12, dtype=torch.float32)
    logits = (4.0 * (x_mm - boundary_mm)).view(1, 12, 1, 1).expand(1, 12, 4, 4).contiguous()
    fine = nib.Nifti1Image(np.zeros((40, 8, 8), np.float32), np.diag([0.5, 1.0, 1.0, 1.0]))
    probabilities = ensemble_probabilities(
        [back_to_input_grid(logits, coarse_affine, fine)], Outputs('sigmoid', ((1,),))
    )[0, :, 2, 2]
    first_foreground_mm = 0.5 * int(torch.nonzero(probabilities > 0.5)[0])
    # Interpolating probabilities instead would put the crossing near 10.9 mm, between voxel centres.
    assert boundary_mm <= first_foreground_mm < boundary_mm + 0.5, first_foreground_mm


@pytest.mark.parametrize(
    'input_spacing,input_orientation',
    [
        (
            (1.37, 1.37, 10.0),
            (1, 1, 1),
        ),  # 203 x 1.37 / 1.5625 = 178.0...: the preprocessed grid stops short of every face
        ((1.37, 1.37, 10.0), (-1, 1, 1)),  # the same in a mirrored (LAS) input
        ((1.2, 1.7, 9.0), (1, -1, 1)),  # finer on one axis, coarser on the others
    ],
)
def test_the_faces_of_the_input_take_the_nearest_values_not_the_resampler_s_fill(input_spacing, input_orientation):
    """Where the preprocessed grid ends short of the input's outermost voxels,
    the edge values continue; no logit 0 appears."""
    input_affine = np.diag([*(s * o for s, o in zip(input_spacing, input_orientation)), 1.0])
    nifti = nib.Nifti1Image(np.random.rand(203, 203, 10).astype(np.float32), input_affine)
    preprocessed = Preprocessing((1.5625, 1.5625, 10.0))(image_subject(Path('scan.nii.gz'), nifti, 1))['image']
    x = torch.linspace(2.0, 6.0, preprocessed.shape[1]).view(-1, 1, 1)
    logits = torch.stack([x.expand(preprocessed.shape[1:]), torch.full(preprocessed.shape[1:], -7.0)])
    back = back_to_input_grid(logits, preprocessed.affine, nifti)
    assert back.shape == (2, 203, 203, 10)
    assert torch.all(back[1] == -7.0), f'{(back[1] != -7.0).float().mean():.1%} of the voxels lost the constant logit'
    assert 2.0 - 1e-5 <= float(back[0].min()) and float(back[0].max()) <= 6.0 + 1e-5, (
        "values outside the volume's own range were invented"
    )


class SureOfTheBrightHalf(torch.nn.Module):
    """Logits +6 where the z-scored image is bright and -6 where it is dark (softmax: background the opposite)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logit = 6.0 * torch.tanh(20.0 * image[:, :1])
        return torch.cat([-logit, logit], dim=1) if self.channels == 2 else logit


def sure_of_the_bright_half(trained: Path, target: Path, kind: str) -> Predictor:
    """A predictor with the trained checkpoint's plan as ``kind`` outputs,
    whose network is :class:`SureOfTheBrightHalf`."""
    state = load_checkpoint(trained)
    channels = 2 if kind == 'softmax' else 1
    for name in [key for key in state['model'] if key.split('.')[0] in ('head', 'deep_heads')]:
        state['model'][name] = torch.zeros(channels, *state['model'][name].shape[1:])
    plan = state.pop('plan')
    plan = replace(plan, model={**plan.model, 'out_channels': channels}, output=kind)
    save_checkpoint(target, plan, **{key: value for key, value in state.items() if key != 'format'})
    predictor = Predictor(target, tta=False, postprocessing=Postprocessing.none())
    predictor.models[0] = replace(predictor.models[0], network=SureOfTheBrightHalf(channels))
    return predictor


@pytest.mark.parametrize('kind', ['sigmoid', 'softmax'])
def test_a_model_sure_everywhere_is_as_sure_on_the_faces_of_the_scan(trained, tmp_path, kind):
    """A scan whose size x spacing is not a whole number of the model's voxels:
    the faces get the nearest inside probability."""
    predictor = sure_of_the_bright_half(trained, tmp_path / 'sure.pt', kind)
    trained_spacing = load_checkpoint(trained)['plan'].target_spacing
    spacing = (trained_spacing[0] * 0.93, trained_spacing[1] * 0.93, trained_spacing[2])
    data = np.zeros((45, 47, 12), np.float32)
    data[:22] = 1.0  # the bright half, sure foreground
    image = tmp_path / 'scan.nii.gz'
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), image)
    mask, probabilities, _ = predictor.predict(image)
    sure = 1 / (1 + np.exp(-12.0 if kind == 'softmax' else -6.0))
    expected = np.where(np.arange(45)[:, None, None] < 22, sure, 1 - sure) * np.ones((1, 47, 12))
    away_from_the_middle = np.abs(np.arange(45) - 21.5) > 3
    error = np.abs(probabilities[0] - expected)[away_from_the_middle]
    assert error.max() < 1e-3, f'{(error > 1e-3).mean():.1%} of the voxels off, by up to {error.max():.3f}'
    assert mask[:19].all() and not mask[25:].any()


def test_distances_and_volumes_use_the_affine_s_voxel_size_when_pixdim_disagrees(tmp_path):
    """The pipeline places voxels by the affine (the sform here):
    millimetres must follow it, not the header's pixdim."""
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[5:15, 5:15, 5:15] = 1
    paths = {}
    for name, data in (('image', reference.astype(np.float32)), ('label', reference)):
        nifti = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
        nifti.header.set_zooms((1.0, 1.0, 1.0))
        paths[name] = tmp_path / f'{name}.nii.gz'
        nib.save(nifti, paths[name])
    image = nib.load(paths['image'])
    assert image.header.get_zooms() == (1.0, 1.0, 1.0)
    (row,) = evaluate_case(
        'case',
        np.roll(reference, 1, axis=2),
        image,
        paths['label'],
        Outputs.one_per_label('sigmoid', [1], ['atrium']),
        paths['image'],
    )
    assert row['hd95_mm'] == pytest.approx(3.0) and row['reference_ml'] == pytest.approx(1000 * 12 / 1000)


def test_dataset_json_input_with_evaluation(trained, small_dataset_template, tmp_path):
    output = tmp_path / 'out'
    argv = scoring_command(
        trained, small_dataset_template, output, '--subset', 'validation', '--png', '--save-probabilities'
    )
    assert run_cli(predict_main, argv) == 0
    validation = json.loads((trained.parent / 'splits.json').read_text())['validation']
    assert sorted(p.name for p in output.glob('*.png')) == sorted(f'{c}.png' for c in validation)
    assert all((output / f'{c}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for c in validation)
    probabilities = nib.load(output / f'{validation[0]}_probabilities.nii.gz')
    assert probabilities.shape == (*nib.load(scan(small_dataset_template, validation[0])).shape, 1)
    summary = json.loads((output / 'summary.json').read_text())
    assert summary['1']['cases'] == len(validation)
    rows = list(csv.DictReader((output / 'metrics.csv').read_text().splitlines()))
    assert sorted(row['case'] for row in rows) == sorted(validation)
    for row in rows:  # each score is the Dice of the mask as written against the reference file
        mask = np.asarray(nib.load(output / f'{row["case"]}.nii.gz').dataobj) == 1
        reference = np.asarray(nib.load(small_dataset_template / 'labelsTr' / f'{row["case"]}.nii.gz').dataobj) == 1
        assert float(row['dice']) == pytest.approx(dice(mask, reference))
    assert summary['1']['dice']['mean'] == pytest.approx(np.mean([float(row['dice']) for row in rows]))


def test_mirroring_tta_is_the_default_and_agrees_with_one_pass(trained, small_dataset_template):
    required = ['--checkpoint', str(trained), '--input', 'x', '--output', 'y']
    assert build_parser().parse_args(required).tta and not build_parser().parse_args([*required, '--no-tta']).tta
    mirrored, single = Predictor(trained), Predictor(trained, tta=False)
    assert mirrored.tta and not single.tta
    predictions = [predictor.predict(scan(small_dataset_template)) for predictor in (mirrored, single)]
    (mask_mirrored, probabilities_mirrored, _), (mask_single, probabilities_single, _) = predictions
    assert mask_mirrored.shape == mask_single.shape
    assert not np.allclose(probabilities_mirrored, probabilities_single), 'the 8 flips must change the probabilities'
    assert 0.9 < dice(mask_mirrored == 1, mask_single == 1), 'the mean over 8 flips should refine, not change, the mask'


def test_in_plane_mirroring_flips_a_thick_slice_plan_across_its_slice_plane_only(trained, small_dataset_template):
    """With ``--tta-mirroring in-plane`` a thick-slice model averages the 4 flips that keep its slices in order."""
    predictor = Predictor(trained, tta_mirroring='in-plane')
    isotropic = predictor.models[0]
    assert isotropic.thick_axis is None and isotropic.mirror_axes('in-plane') == (0, 1, 2)
    predictor.models[0] = thick = replace(isotropic, thick_axis=2)
    assert thick.mirror_axes('in-plane') == (0, 1) and thick.mirror_axes('all') == (0, 1, 2)
    image = torch.randn(1, 24, 20, 12)
    calls = []
    original = thick.network.forward
    thick.network.forward = lambda batch: calls.append(len(batch)) or original(batch)
    logits, _ = predictor.model_logits(thick, image)
    assert sum(calls) == 4 * window_count(image, thick.patch_size), 'every window of each of the 4 flips, no more'
    expected = predict_logits(thick.network, image, thick.patch_size, (0, 1), **predictor.window_options)
    torch.testing.assert_close(logits, expected)


def window_count(image: torch.Tensor, patch_size) -> int:
    """The windows of one pass over ``image``, padded up to the patch where it is smaller."""
    sizes = [max(size, patch) for size, patch in zip(image.shape[1:], patch_size)]
    return int(np.prod([len(window_starts(size, patch, DEFAULT_OVERLAP)) for size, patch in zip(sizes, patch_size)]))


def test_tta_mirroring_without_tta_is_refused(trained, small_dataset_template, tmp_path, capsys):
    code, errors = run_predict(
        prediction_command(
            [trained], scan(small_dataset_template), tmp_path / 'out', '--no-tta', '--tta-mirroring', 'in-plane'
        ),
        capsys,
    )
    assert code == EXIT_USER_ERROR and errors == ['error: --tta-mirroring: has no effect with --no-tta']
    assert not (tmp_path / 'out').exists()


def run_predict(argv, capsys) -> tuple[int, list[str]]:
    return run_cli(predict_main, argv), error_lines(capsys)


def test_unreadable_case_is_skipped_and_reported(trained, small_dataset_template, tmp_path, capsys):
    inputs = tmp_path / 'inputs'
    inputs.mkdir()
    (inputs / 'good.nii.gz').write_bytes(scan(small_dataset_template).read_bytes())
    (inputs / 'broken.nii.gz').write_bytes(b'not a nifti at all')
    code, errors = run_predict(
        ['--checkpoint', str(trained), '--input', str(inputs), '--output', str(tmp_path / 'out')], capsys
    )
    assert code == EXIT_USER_ERROR
    assert len(errors) == 1 and 'broken.nii.gz' in errors[0]
    assert (tmp_path / 'out' / 'good.nii.gz').is_file() and not (tmp_path / 'out' / 'broken.nii.gz').exists()


def test_a_constant_scan_is_skipped_and_reported(trained, tmp_path, capsys):
    path = tmp_path / 'blank.nii.gz'
    nib.save(nib.Nifti1Image(np.full((40, 40, 20), 7, np.float32), np.eye(4)), path)
    code, errors = run_predict(
        ['--checkpoint', str(trained), '--input', str(path), '--output', str(tmp_path / 'out')], capsys
    )
    assert (
        code == EXIT_USER_ERROR
        and len(errors) == 1
        and 'blank.nii.gz' in errors[0]
        and 'one value in every voxel' in errors[0]
    )


# A 4D file is a cine series for a one-channel model (tests/quality/test_cardiac_function.py); five axes are not.
@pytest.mark.parametrize(
    'shape,problem', [((40, 40, 20, 1, 2), 'expected a 3D image'), ((40, 40), 'expected a 3D image')]
)
def test_wrong_dimensions_or_channels(trained, tmp_path, capsys, shape, problem):
    path = tmp_path / 'odd.nii.gz'
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    code, errors = run_predict(
        ['--checkpoint', str(trained), '--input', str(path), '--output', str(tmp_path / 'out')], capsys
    )
    assert code == EXIT_USER_ERROR and len(errors) == 1 and 'odd.nii.gz' in errors[0] and problem in errors[0]


def test_checkpoint_of_another_architecture(trained, small_dataset_template, tmp_path, capsys):
    state = torch.load(trained, weights_only=True)
    plan = json.loads(state['plan'])
    plan['model']['levels'] = 3
    state['plan'] = json.dumps(plan)
    other = tmp_path / 'other.pt'
    torch.save(state, other)
    code, errors = run_predict(
        ['--checkpoint', str(other), '--input', str(scan(small_dataset_template)), '--output', str(tmp_path / 'out')],
        capsys,
    )
    assert code == EXIT_USER_ERROR and 'does not match the U-Net architecture' in errors[0]


class Exploit:
    def __reduce__(self):
        return (print, ('this must never run',))


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@pytest.mark.parametrize(
    'content,problem',
    [
        (lambda path: torch.save({'format': Exploit()}, path), 'refusing to load'),
        (lambda path: path.write_bytes(b''), 'truncated or corrupt'),
        (lambda path: path.write_text('{"config": {}}'), 'not a PyTorch archive'),
        (lambda path: path.write_bytes(torch.save({'a': 1}, path) or path.read_bytes()[:300]), 'truncated or corrupt'),
        (lambda path: torch.save({'weights': torch.zeros(2)}, path), 'not a checkpoint of this project'),
    ],
)
def test_untrusted_or_foreign_checkpoints_are_refused(small_dataset_template, tmp_path, capsys, content, problem):
    checkpoint = tmp_path / 'evil.pt'
    content(checkpoint)
    code, errors = run_predict(
        [
            '--checkpoint',
            str(checkpoint),
            '--input',
            str(scan(small_dataset_template)),
            '--output',
            str(tmp_path / 'out'),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and len(errors) == 1 and 'evil.pt' in errors[0] and problem in errors[0]
    assert 'this must never run' not in capsys.readouterr().out


def test_unwritable_output_folder(trained, small_dataset_template, tmp_path, capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    code, errors = run_predict(
        ['--checkpoint', str(trained), '--input', str(scan(small_dataset_template)), '--output', str(blocker / 'out')],
        capsys,
    )
    assert code == EXIT_USER_ERROR and 'not writable' in errors[0]


@pytest.mark.parametrize('target', ['inputs', 'labels'])
def test_an_output_folder_that_would_overwrite_scans_or_labels_is_refused(
    trained, small_dataset_template, tmp_path, capsys, target
):
    folders = {name: tmp_path / name for name in ('inputs', 'labels')}
    for name, source in (
        ('inputs', scan(small_dataset_template)),
        ('labels', small_dataset_template / 'labelsTr' / 'synthetic_001.nii.gz'),
    ):
        folders[name].mkdir()
        (folders[name] / 'synthetic_001.nii.gz').write_bytes(source.read_bytes())
    before = {name: (folder / 'synthetic_001.nii.gz').read_bytes() for name, folder in folders.items()}
    code, errors = run_predict(
        [
            '--checkpoint',
            str(trained),
            '--input',
            str(folders['inputs']),
            '--labels',
            str(folders['labels']),
            '--output',
            str(folders[target]),
        ],
        capsys,
    )
    assert (
        code == EXIT_USER_ERROR and len(errors) == 1 and str(folders[target]) in errors[0] and 'overwrite' in errors[0]
    )
    assert all((folder / 'synthetic_001.nii.gz').read_bytes() == before[name] for name, folder in folders.items())


def test_an_output_folder_of_linked_scans_is_refused_however_it_is_spelled(
    trained, small_dataset_template, tmp_path, capsys
):
    """A mask would replace the link to the scan it was made from: the folder the link is in counts, not its target."""
    inputs = tmp_path / 'inputs'
    inputs.mkdir()
    (inputs / 'synthetic_001.nii.gz').symlink_to(scan(small_dataset_template))
    (tmp_path / 'elsewhere').mkdir()
    for output in (inputs, tmp_path / 'elsewhere' / '..' / 'inputs', Path('~') / 'inputs'):
        with pytest.MonkeyPatch.context() as patched:
            patched.setenv('HOME', str(tmp_path))
            code, errors = run_predict(
                ['--checkpoint', str(trained), '--input', str(inputs), '--output', str(output)], capsys
            )
        assert code == EXIT_USER_ERROR and len(errors) == 1 and 'holds the input scans' in errors[0], output
    assert (inputs / 'synthetic_001.nii.gz').is_symlink()


def test_an_output_folder_holding_the_dataset_s_labels_is_refused(trained, small_dataset, tmp_path, capsys):
    labels = small_dataset / 'labelsTr'
    before = {path.name: path.read_bytes() for path in labels.iterdir()}
    code, errors = run_predict(
        ['--checkpoint', str(trained), '--input', str(small_dataset / 'dataset.json'), '--output', str(labels)], capsys
    )
    assert code == EXIT_USER_ERROR and len(errors) == 1 and 'reference labels' in errors[0]
    assert {path.name: path.read_bytes() for path in labels.iterdir()} == before


def test_a_subset_that_matches_no_case_of_the_input_is_an_error(trained, small_dataset, tmp_path, capsys):
    content = json.loads((small_dataset / 'dataset.json').read_text())
    validation = set(json.loads((trained.parent / 'splits.json').read_text())['validation'])
    content['training'] = [
        entry for entry in content['training'] if Path(entry['image']).name.split('.')[0] not in validation
    ]
    (small_dataset / 'dataset.json').write_text(json.dumps(content))
    code, errors = run_predict(
        [
            '--checkpoint',
            str(trained),
            '--input',
            str(small_dataset / 'dataset.json'),
            '--subset',
            'validation',
            '--output',
            str(tmp_path / 'out'),
        ],
        capsys,
    )
    assert (
        code == EXIT_USER_ERROR
        and len(errors) == 1
        and 'splits.json' in errors[0]
        and "'validation' cases is in the --input" in errors[0]
    )


def test_a_case_that_fails_evaluation_still_counts_its_written_mask(trained, small_dataset_template, tmp_path, capsys):
    labels = tmp_path / 'labels'
    labels.mkdir()  # no reference for the one case
    code = run_cli(
        predict_main,
        [
            '--checkpoint',
            str(trained),
            '--input',
            str(scan(small_dataset_template)),
            '--labels',
            str(labels),
            '--output',
            str(tmp_path / 'out'),
        ],
    )
    printed = capsys.readouterr()
    assert code == EXIT_USER_ERROR and 'reference label not found' in printed.err
    assert (
        (tmp_path / 'out' / 'synthetic_001.nii.gz').is_file()
        and '1 mask in' in printed.out
        and '1 case(s) failed' in printed.out
    )


def test_predictor_loads_checkpoint_plan(trained):
    predictor = Predictor(trained)
    assert predictor.models[0].patch_size == (32, 32, 16), 'the patch size the fixture trained with (conftest.py)'


def test_the_printed_summary_says_how_many_cases_each_mean_averages(tmp_path):
    rows = [
        {
            'case': name,
            'label': 1,
            'name': 'atrium',
            'dice': dice,
            'iou': dice,
            'hd95_mm': hd95,
            'asd_mm': hd95 / 3,
            'predicted_ml': 1.0,
            'reference_ml': 1.0,
        }
        for name, dice, hd95 in (('a', 0.9, 3.0), ('b', 0.0, float('nan')), ('c', 0.8, 5.0))
    ]
    table = write_evaluation(rows, tmp_path)
    counts = next(line for line in table.splitlines() if line.startswith('cases averaged')).split()
    assert counts[3:] == [
        '3',
        'of',
        '3',
        '3',
        'of',
        '3',
        '2',
        'of',
        '3',
        '2',
        'of',
        '3',
        '3',
        'of',
        '3',
        '3',
        'of',
        '3',
    ]
    summary = json.loads((tmp_path / 'summary.json').read_text())['1']
    assert (
        summary['hd95_mm']['mean'] == 4.0 and summary['hd95_mm']['count'] == 2 and summary['hd95_mm']['undefined'] == 1
    )
