"""Trained networks as ONNX or TorchScript files that carry their :class:`~heartseg.checkpoint.ModelPlan`.

The file's suffix picks the format: ``.onnx`` (opset :data:`ONNX_OPSET`, the
plan in ``metadata_props``) or ``.pt`` / ``.ts`` (traced TorchScript, the plan
as an extra file). Both take a ``(N, C, X, Y, Z)`` float32 image of any batch
size and any spatial size divisible per axis by the network's total pooling, and return the
full-resolution logits: the deep-supervision heads are left out. Loading an
exported file gives the same :class:`ExportedModel` a checkpoint gives, so
``predict.py`` runs it through the same preprocessing, sliding window, TTA and
resampling back to the input grid.

ONNX needs the optional ``onnx`` and (to predict) ``onnxruntime`` packages:
``pip install -r requirements-export.txt``.

Example::

    export_model(Path('runs/la/best.pt'), Path('la.onnx'))
    network, plan = load_exported(Path('la.onnx'), torch.device('cpu'))
"""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from heartseg.checkpoint import ModelPlan, is_torchscript
from heartseg.errors import UserError
from heartseg.files import atomic_write
from mymodel import UNet3D

ONNX_OPSET = 18
# The key of the plan in ONNX metadata_props, and the name of the TorchScript extra file.
PLAN_KEY = 'heartseg_plan'
ONNX_SUFFIXES = ('.onnx',)
TORCHSCRIPT_SUFFIXES = ('.pt', '.ts')
INSTALL_HINT = 'pip install -r requirements-export.txt'

Network = Callable[[torch.Tensor], torch.Tensor]


def export_format(path: Path) -> str:
    """``'onnx'`` or ``'torchscript'``, from the file's suffix."""
    if path.suffix in ONNX_SUFFIXES:
        return 'onnx'
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        return 'torchscript'
    raise UserError(path, f'unknown export format {path.suffix!r}; use .onnx (ONNX) or .pt / .ts (TorchScript)')


def is_exported(path: Path) -> bool:
    """Whether ``path`` is an ONNX file or a TorchScript archive rather than a training checkpoint."""
    return path.suffix in ONNX_SUFFIXES or is_torchscript(path)


def export_network(network: UNet3D, plan: ModelPlan, path: Path) -> None:
    """Write ``network`` in eval mode, without its deep-supervision heads, with its plan to ``path``."""
    network = network.without_deep_supervision().float().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, plan.channels, *plan.patch_size)
    if export_format(path) == 'onnx':
        atomic_write(path, lambda temporary: _write_onnx(network, example, plan, temporary))
    else:
        atomic_write(path, lambda temporary: _write_torchscript(network, example, plan, temporary))


def _write_torchscript(network: nn.Module, example: torch.Tensor, plan: ModelPlan, path: Path) -> None:
    # Tracing records the eval-mode graph, which has no deep-supervision branch and no data-dependent control flow.
    with torch.no_grad(), _quiet_torchscript():
        torch.jit.save(torch.jit.trace(network, example), str(path), _extra_files={PLAN_KEY: plan.to_json()})


def _write_onnx(network: nn.Module, example: torch.Tensor, plan: ModelPlan, path: Path) -> None:
    onnx = optional_module('onnx', 'ONNX export')
    axes = {0: 'batch', 2: 'x', 3: 'y', 4: 'z'}
    buffer = io.BytesIO()
    # The TorchScript-based exporter takes dynamic_axes as they are and, unlike the dynamo one, needs no onnxscript.
    with torch.no_grad(), _quiet_torchscript():
        torch.onnx.export(
            network,
            (example,),
            buffer,
            input_names=['image'],
            output_names=['logits'],
            dynamic_axes={'image': axes, 'logits': axes},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, {PLAN_KEY: plan.to_json()})
    onnx.save(model, str(path))


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    # The U-Net's input-size assertion becomes a constant in the trace; the exported file's
    # callers are held to the same rule by predict.py's patch sizes, so that warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter(
            'ignore', DeprecationWarning
        )  # torch 2.13 deprecates torch.jit and this exporter; see the README
        yield


def load_exported(path: Path, device: torch.device) -> tuple[Network, ModelPlan]:
    """The network of an exported file, callable on a ``(N, C, X, Y, Z)`` tensor, and its plan."""
    if not path.is_file():
        raise UserError(path, 'exported model not found')
    if export_format(path) == 'onnx':
        return _load_onnx(path, device)
    return _load_torchscript(path, device)


def _load_torchscript(path: Path, device: torch.device) -> tuple[Network, ModelPlan]:
    extra = {PLAN_KEY: ''}
    try:
        with _quiet_torchscript():
            network = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as error:  # TorchScript raises RuntimeError and others for damaged archives
        raise UserError(
            path, f'cannot read TorchScript file, it may be truncated or corrupt ({type(error).__name__})'
        ) from None
    if not extra[PLAN_KEY]:
        raise UserError(
            path, f'TorchScript file was not exported by this project (no {PLAN_KEY} in it); export one with export.py'
        )
    return network.eval(), ModelPlan.from_json(extra[PLAN_KEY], path)


def _load_onnx(path: Path, device: torch.device) -> tuple[Network, ModelPlan]:
    runtime = optional_module('onnxruntime', 'Predicting with an ONNX file')
    providers = ['CPUExecutionProvider']
    if device.type == 'cuda' and 'CUDAExecutionProvider' in runtime.get_available_providers():
        providers.insert(0, 'CUDAExecutionProvider')
    options = runtime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same CPU share as the PyTorch path
    try:
        session = runtime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        raise UserError(
            path, f'cannot read ONNX file, it may be truncated or corrupt ({type(error).__name__})'
        ) from None
    metadata = session.get_modelmeta().custom_metadata_map
    if PLAN_KEY not in metadata:
        raise UserError(
            path,
            f'ONNX file was not exported by this project (no {PLAN_KEY} in its metadata); export one with export.py',
        )
    return OnnxNetwork(session), ModelPlan.from_json(metadata[PLAN_KEY], path)


class OnnxNetwork:
    """An ONNX Runtime session called like the PyTorch network: image tensor in, logits tensor out."""

    def __init__(self, session: object):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input_name: image.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(logits).to(image.device)


def optional_module(name: str, purpose: str, install: str = INSTALL_HINT) -> ModuleType:
    """Import an optional package, or say in one line how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(name, f'{purpose} needs the optional package {name!r}: {install}') from None
