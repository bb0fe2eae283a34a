"""Exported models against PyTorch: logits on one patch, masks and seconds per case for each backend.

Exports the checkpoint to ONNX and TorchScript in a temporary folder, then
(1) compares each exported network's logits with PyTorch's on one patch of the
first case, (2) predicts the cases with each backend through ``predict.py``'s
code path and scores each mask against PyTorch's (Dice, exact grid), and
(3) times each backend per case, with and without TTA, run alternately with
PyTorch, the median of ``--repeats``.

Example:
    python -m benchmarks.export_check --checkpoint runs/la/best.pt --images test16/images --cases 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import timed
from heartseg.cli import Parser, integer, user_path
from heartseg.commands.predict_inputs import NIFTI_SUFFIXES
from heartseg.data.reading import image_subject, load_nifti
from heartseg.errors import run_cli
from heartseg.inference.export import export_network
from heartseg.inference.prediction import Predictor, load_network
from heartseg.metrics import dice
from heartseg.preprocessing.preprocessing import Preprocessing

BACKENDS = {'onnx': 'model.onnx', 'torchscript': 'model.pt'}


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=user_path, required=True, help='a best.pt written by main.py')
    parser.add_argument('--images', type=user_path, required=True, help='folder of scans; the first --cases are used')
    parser.add_argument('--cases', type=integer(1), default=5, help='(default: 5)')
    parser.add_argument(
        '--repeats', type=integer(1), default=3, help='timing runs; the median is reported (default: 3)'
    )
    return parser


def patch_difference(checkpoint: Path, exported: Path, image: Path) -> float:
    """Largest absolute logit difference between PyTorch and the exported file on the first patch of ``image``."""
    network, plan = load_network(checkpoint, torch.device('cpu'))
    loaded = Predictor([exported], device='cpu').models[0].network
    subject = Preprocessing.for_plan(plan, checkpoint)(image_subject(image, load_nifti(image), plan.channels))
    patch = subject['image'].data[(slice(None), *(slice(0, size) for size in plan.patch_size))][None]
    with torch.no_grad():
        return float((loaded(patch) - network(patch)).abs().max())


def seconds_per_case(predictors: dict[str, Predictor], images: list[Path], repeats: int) -> dict[str, float]:
    """Each predictor's median seconds per case, the predictors run in turn within each repeat."""
    runs: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(repeats):
        for name, predictor in predictors.items():
            runs[name].append(timed(lambda: [predictor.predict(image) for image in images]) / len(images))
    return {name: round(statistics.median(values), 3) for name, values in runs.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_grad_enabled(False)
    images = sorted(p for p in args.images.iterdir() if p.name.endswith(NIFTI_SUFFIXES))[: args.cases]
    result: dict = {'cases': [p.name for p in images], 'torch_threads': torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as folder:
        network, plan = load_network(args.checkpoint, torch.device('cpu'))
        files = {name: Path(folder) / filename for name, filename in BACKENDS.items()}
        for path in files.values():
            export_network(network, plan, path)
        result['max_logit_difference'] = {
            name: patch_difference(args.checkpoint, path, images[0]) for name, path in files.items()
        }
        sources = {'pytorch': args.checkpoint, **files}
        for tta in (False, True):
            predictors = {name: Predictor([path], device='cpu', tta=tta) for name, path in sources.items()}
            masks = {name: [predictor.predict(image)[0] for image in images] for name, predictor in predictors.items()}
            shapes = [load_nifti(image).shape[:3] for image in images]
            result[f'tta_{tta}'] = {
                'min_dice_against_pytorch': {
                    name: round(min(dice(m > 0, r > 0) for m, r in zip(masks[name], masks['pytorch'])), 5)
                    for name in files
                },
                'identical_masks': {
                    name: sum(np.array_equal(m, r) for m, r in zip(masks[name], masks['pytorch'])) for name in files
                },
                'masks_in_input_shape': {
                    name: all(m.shape == shape for m, shape in zip(masks[name], shapes)) for name in files
                },
                'seconds_per_case': seconds_per_case(predictors, images, args.repeats),
            }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
