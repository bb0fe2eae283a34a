"""Export a trained model to ONNX or TorchScript, to deploy it outside this code.

The output's suffix picks the format: .onnx is ONNX (opset 18, dynamic batch
and spatial axes, each a multiple of its total pooling), .pt or .ts is traced
TorchScript. The deep-supervision heads are left out. The file carries the
model plan (spacing, patch size, labels, input channels, normalisation), so
``predict.py --checkpoint FILE`` runs it exactly as it runs the checkpoint. A
cross-validation folder exports one file per fold, the fold appended to the
name (cv.onnx gives cv_fold0.onnx, cv_fold1.onnx, ...); give them all to
``predict.py --checkpoint`` to predict with the ensemble.

Example:
    python export.py --checkpoint runs/la/best.pt --output la.onnx
    python export.py --checkpoint runs/la --output la.pt
    python export.py --checkpoint runs/cv --output exported/cv.onnx
    python predict.py --checkpoint la.onnx --input scans/ --output masks/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from heartseg.cli import Parser, user_path
from heartseg.errors import UserError
from heartseg.files import ensure_writable_dir
from heartseg.inference.export import ONNX_OPSET, export_format, export_network, is_exported, optional_module
from heartseg.inference.prediction import load_network
from heartseg.run.crossval import resolve_checkpoints


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(
        description=summary, epilog=rest.replace('``', ''), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        '--checkpoint',
        type=user_path,
        required=True,
        help='a checkpoint (best.pt), a run folder (its best.pt) or a cross-validation folder (every fold)',
    )
    parser.add_argument(
        '--output', type=user_path, required=True, help='the exported file: .onnx, or .pt / .ts for TorchScript'
    )
    return parser


def export_targets(checkpoint: Path, output: Path) -> list[tuple[Path, Path]]:
    """(checkpoint, exported file) pairs: one, or one per fold of a cross-validation."""
    checkpoints = resolve_checkpoints([checkpoint])
    if len(checkpoints) == 1:
        targets = [(checkpoints[0], output)]
    else:
        targets = [
            (source, output.with_name(f'{output.stem}_fold{fold}{output.suffix}'))
            for fold, source in enumerate(checkpoints)
        ]
    for _, target in targets:
        if target.exists() and not is_exported(target):  # a checkpoint, above all: its run could not resume
            raise UserError(
                target, 'exists and is not a file export.py wrote; refusing to overwrite it, choose another --output'
            )
    return targets


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    file_format = export_format(args.output)
    if file_format == 'onnx':
        optional_module('onnx', 'ONNX export')
    targets = export_targets(args.checkpoint, args.output)
    ensure_writable_dir(args.output.parent)
    described = f'ONNX opset {ONNX_OPSET}' if file_format == 'onnx' else 'TorchScript (traced)'
    for source, target in targets:
        network, plan = load_network(source, torch.device('cpu'))
        export_network(network, plan, target)
        print(f'Wrote {target} ({described}) from {source}')
    if len(targets) > 1:
        print(
            'Predict with the ensemble: python predict.py --checkpoint '
            + ' '.join(str(target) for _, target in targets)
            + ' ...'
        )
    return 0
