"""Each post-processing applied to the same unprocessed masks, scored side by side.

The masks come from ``predict.py --no-keep-largest`` (with or without TTA);
each post-processing of :data:`ARMS` is applied to them, scored against the
reference labels into ``OUTPUT/<arm>/metrics.csv`` (``predict.py``'s columns),
and the arms are compared with :mod:`benchmarks.compare_runs`, paired against
``none``. Run it on validation cases only: the arm it favours is a choice.

Example:
    python -m benchmarks.postprocessing_arms --checkpoint runs/acdc --predictions runs/acdc/val_raw \\
        --labels ACDC_val/test/labels --output runs/acdc/postprocessing
"""

from __future__ import annotations

import argparse
import sys

import nibabel as nib
import numpy as np
import torch

from benchmarks import compare_runs
from heartseg.cli import Parser, user_path
from heartseg.errors import UserError, run_cli
from heartseg.files import write_rows_csv
from heartseg.inference.postprocessing import Postprocessing
from heartseg.inference.prediction import load_trained_model, score_case
from heartseg.outputs import Outputs


def arms(outputs: Outputs) -> dict[str, Postprocessing]:
    """The post-processings compared: nnU-Net's two steps, alone and together, and neither."""
    every = Postprocessing.every_structure(outputs).structures
    return {
        'none': Postprocessing.none(),
        'every-structure': Postprocessing(False, every),
        'all-together': Postprocessing(True, ()),
        'all-together-then-every-structure': Postprocessing(True, every),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--checkpoint', type=user_path, required=True, help="the model's checkpoint: its structures")
    parser.add_argument(
        '--predictions', type=user_path, required=True, help='a predict.py --no-keep-largest output folder'
    )
    parser.add_argument('--labels', type=user_path, required=True, help='folder of reference <case>.nii.gz')
    parser.add_argument('--output', type=user_path, required=True, help='folder for <arm>/metrics.csv')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    checkpoint = args.checkpoint / 'best.pt' if args.checkpoint.is_dir() else args.checkpoint
    outputs = load_trained_model(checkpoint, torch.device('cpu')).outputs
    references = sorted(args.labels.glob('*.nii.gz'))
    if not references:
        raise UserError(args.labels, 'holds no <case>.nii.gz reference labels')
    rows: dict[str, list[dict]] = {name: [] for name in arms(outputs)}
    for reference_path in references:
        case = reference_path.name.removesuffix('.nii.gz')
        predicted_path = args.predictions / reference_path.name
        if not predicted_path.is_file():
            raise UserError(predicted_path, f'no prediction of case {case}')
        predicted = nib.load(predicted_path)
        mask = np.asarray(predicted.dataobj).astype(np.uint8)
        reference = np.asarray(nib.load(reference_path).dataobj).astype(np.uint8)
        for name, postprocessing in arms(outputs).items():
            rows[name] += score_case(case, postprocessing.apply(mask, outputs), reference, predicted, outputs)
    for name, arm_rows in rows.items():
        (args.output / name).mkdir(parents=True, exist_ok=True)
        write_rows_csv(args.output / name / 'metrics.csv', arm_rows)
    return compare_runs.main([str(args.output / name) for name in rows] + ['--names', *rows])


if __name__ == '__main__':
    sys.exit(run_cli(main))
