"""export.py and heartseg/export.py: ONNX and TorchScript files that predict like their checkpoint."""

from __future__ import annotations

import importlib
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export import main as export_main
from heartseg.checkpoint import ModelPlan
from heartseg.errors import EXIT_USER_ERROR, run_cli
from heartseg.inference.export import PLAN_KEY, export_network, is_exported, load_exported
from heartseg.inference.prediction import load_network
from mymodel import UNet3D
from predict import main as predict_main

FORMATS = ['model.onnx', 'model.pt']
# float32 logits of two implementations of the same convolutions differ by rounding only.
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope='module', params=FORMATS)
def exported(request, trained, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp('exported') / request.param
    assert run_cli(export_main, ['--checkpoint', str(trained), '--output', str(output)]) == 0
    return output


@pytest.mark.parametrize('shape', [(1, 32, 32, 16), (2, 48, 32, 32)], ids=['patch', 'other batch and size'])
def test_exported_logits_match_pytorch(exported, trained, shape):
    network, plan = load_network(trained, torch.device('cpu'))
    loaded, loaded_plan = load_exported(exported, torch.device('cpu'))
    assert loaded_plan == plan
    image = torch.randn(shape[0], plan.channels, *shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network(image)
        actual = loaded(image)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() < LOGIT_TOLERANCE


@pytest.mark.parametrize('filename', FORMATS)
def test_deep_supervision_heads_are_left_out(filename, tmp_path):
    arguments = {'levels': 3, 'base_channels': 4, 'deep_supervision': True}
    network = UNet3D(**arguments)
    assert any('deep_heads' in name for name, _ in network.named_parameters()), (
        'the network must have heads to leave out'
    )
    plan = ModelPlan(
        arguments,
        (1.0, 1.0, 1.0),
        (16, 16, 16),
        {'0': 'background', '1': 'structure'},
        {'0': 'MRI'},
        output='sigmoid',
        regions=[],
    )
    export_network(network, plan, tmp_path / filename)
    if filename.endswith('.onnx'):
        names = [initializer.name for initializer in onnx.load(str(tmp_path / filename)).graph.initializer]
    else:
        names = [name for name, _ in torch.jit.load(str(tmp_path / filename)).named_parameters()]
    assert names and not any('deep_heads' in name for name in names)


def test_predicting_with_the_exported_file_gives_the_checkpoints_mask(
    exported, trained, small_dataset_template, tmp_path
):
    image = small_dataset_template / 'imagesTr' / 'synthetic_002.nii.gz'
    masks = {}
    for name, model in (('checkpoint', trained), ('exported', exported)):
        output = tmp_path / name
        assert run_cli(predict_main, ['--checkpoint', str(model), '--input', str(image), '--output', str(output)]) == 0
        masks[name] = nib.load(output / image.name)
    assert np.array_equal(masks['exported'].affine, nib.load(image).affine)
    assert masks['exported'].shape == nib.load(image).shape
    assert np.array_equal(np.asarray(masks['exported'].dataobj), np.asarray(masks['checkpoint'].dataobj))


def test_a_checkpoint_is_not_taken_for_an_exported_file(trained, exported):
    assert is_exported(exported) and not is_exported(trained)


class Foreign(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def foreign_onnx(path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node('Identity', ['x'], ['y'])],
        'foreign',
        [onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(path))


BAD_FILES = {
    'ONNX without our metadata': ('foreign.onnx', foreign_onnx, f'no {PLAN_KEY} in its metadata'),
    'corrupt ONNX': ('broken.onnx', lambda path: path.write_bytes(b'\x08\x07garbage' * 40), 'cannot read ONNX file'),
    'TorchScript from elsewhere': (
        'foreign.pt',
        lambda path: torch.jit.save(torch.jit.script(Foreign()), str(path)),
        f'no {PLAN_KEY} in it',
    ),
}


@pytest.mark.parametrize('name', list(BAD_FILES))
def test_a_file_not_exported_here_is_refused_in_one_line(name, small_dataset_template, tmp_path, capsys):
    filename, write, problem = BAD_FILES[name]
    model = tmp_path / filename
    write(model)
    image = small_dataset_template / 'imagesTr' / 'synthetic_002.nii.gz'
    assert (
        run_cli(predict_main, ['--checkpoint', str(model), '--input', str(image), '--output', str(tmp_path / 'out')])
        == EXIT_USER_ERROR
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and str(model) in errors[0] and problem in errors[0], errors


@pytest.mark.parametrize(
    'output,problem',
    [
        ('blocker/model.onnx', 'blocker'),
        ('model.zip', "unknown export format '.zip'"),
    ],
)
def test_bad_output_is_refused_in_one_line_and_nothing_is_written(output, problem, trained, tmp_path, capsys):
    (tmp_path / 'blocker').write_text('a file where the output folder would go')
    before = sorted(tmp_path.iterdir())
    assert run_cli(export_main, ['--checkpoint', str(trained), '--output', str(tmp_path / output)]) == EXIT_USER_ERROR
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and problem in errors[0], errors
    assert sorted(tmp_path.iterdir()) == before


def test_a_checkpoint_or_a_torchscript_file_is_never_overwritten_or_taken_as_a_checkpoint(trained, tmp_path, capsys):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    checkpoint = run_dir / 'best.pt'
    checkpoint.write_bytes(trained.read_bytes())
    (run_dir / 'last.pt').write_bytes(trained.read_bytes())
    for target in ('best.pt', 'last.pt'):
        assert (
            run_cli(export_main, ['--checkpoint', str(checkpoint), '--output', str(run_dir / target)])
            == EXIT_USER_ERROR
        )
        assert 'refusing to overwrite' in capsys.readouterr().err
        assert (run_dir / target).read_bytes() == trained.read_bytes()
    exported = tmp_path / 'model.pt'
    assert run_cli(export_main, ['--checkpoint', str(checkpoint), '--output', str(exported)]) == 0
    assert run_cli(export_main, ['--checkpoint', str(checkpoint), '--output', str(exported)]) == 0, (
        'an earlier export may be replaced'
    )
    capsys.readouterr()
    assert (
        run_cli(export_main, ['--checkpoint', str(exported), '--output', str(tmp_path / 'again.onnx')])
        == EXIT_USER_ERROR
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and 'is an exported TorchScript model, not a training checkpoint' in errors[0], errors


def test_a_missing_optional_package_names_the_install_command(trained, tmp_path, capsys, monkeypatch):
    real_import = importlib.import_module

    def without_onnx(name, *args):
        if name == 'onnx':
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, 'import_module', without_onnx)
    assert (
        run_cli(export_main, ['--checkpoint', str(trained), '--output', str(tmp_path / 'model.onnx')])
        == EXIT_USER_ERROR
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and 'pip install -r requirements-export.txt' in errors[0], errors
