"""``ensemble``: the test Dice of each model and of their ensemble, and the ensemble's cost.

The ensemble averages probabilities (ours) or logits; Dice, HD95 and ASD are
reported for each, and an ensemble's seconds per case against its first model's.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.bench_common import device_name
from benchmarks.timing import interleaved_medians
from heartseg.cli import DefaultsHelpFormatter, integer, user_path
from heartseg.commands.predict_inputs import NIFTI_SUFFIXES
from heartseg.data.cases import case_id_from_path
from heartseg.errors import UserError
from heartseg.inference.prediction import MIRRORING_TTA, Predictor, ensemble_probabilities, evaluate_case
from heartseg.run.crossval import resolve_checkpoints


@torch.no_grad()  # without leaving grad mode off for whatever runs next in this process
def ensemble_benchmark(args: argparse.Namespace) -> dict:
    """Test Dice of each model alone and of their ensemble, averaging probabilities (ours) or logits; seconds per case.

    Every model's input-grid logits are computed once per case, and each way of
    combining them is thresholded and post-processed as ``predict.py`` does.
    """
    checkpoints = resolve_checkpoints(args.checkpoint)
    ensemble = Predictor(checkpoints, device=args.device, tta=args.tta)
    if not args.images.is_dir():
        raise UserError(args.images, 'not a folder of NIfTI scans')
    images = sorted(p for p in args.images.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    scores: dict[str, list[dict]] = {}
    for image in images:
        loaded = ensemble.load(image)
        nifti = loaded.nifti
        logits = [ensemble.input_grid_logits(model, loaded)[0] for model in ensemble.models]
        outputs = ensemble.outputs
        candidates = {f'model_{i}': outputs.probabilities(logit) for i, logit in enumerate(logits)}
        candidates['mean_of_probabilities'] = ensemble_probabilities(logits, outputs)
        candidates['mean_of_logits'] = outputs.probabilities(torch.stack(logits).mean(0))
        case_id = case_id_from_path(image)
        label = next(args.labels / f'{case_id}{s}' for s in NIFTI_SUFFIXES if (args.labels / f'{case_id}{s}').is_file())
        for name, probabilities in candidates.items():
            scores.setdefault(name, []).extend(
                evaluate_case(case_id, ensemble.mask(probabilities), nifti, label, ensemble.outputs, image)
            )
    result = {'cases': len(images), 'models': [str(c) for c in checkpoints], 'tta': args.tta}
    for metric in ('dice', 'hd95_mm', 'asd_mm'):
        result[metric] = {
            name: round(float(np.nanmean([row[metric] for row in rows])), 4) for name, rows in scores.items()
        }
    result['mean_of_single_models_dice'] = round(
        float(np.mean([result['dice'][f'model_{i}'] for i in range(len(checkpoints))])), 4
    )
    if args.timing_cases:
        single = Predictor(checkpoints[0], device=args.device, tta=args.tta)
        timed = images[: args.timing_cases]
        ensemble_seconds, single_seconds = interleaved_medians(
            lambda: [ensemble.predict(image) for image in timed],
            lambda: [single.predict(image) for image in timed],
            args.repeats,
        )
        result.update(
            {
                'device': device_name(ensemble.device),
                'ensemble_seconds_per_case': round(ensemble_seconds / len(timed), 2),
                'single_model_seconds_per_case': round(single_seconds / len(timed), 2),
                'time_ratio_ensemble_over_single': round(ensemble_seconds / single_seconds, 2),
            }
        )
    return result


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``ensemble`` subcommand and its flags."""
    ensemble = commands.add_parser(
        'ensemble',
        help='test Dice of each model and of the ensemble (probabilities vs logits averaged); seconds per case',
        formatter_class=DefaultsHelpFormatter,
    )
    ensemble.add_argument(
        '--checkpoint',
        type=user_path,
        nargs='+',
        required=True,
        help="checkpoints, or a cross-validation folder (every fold's best.pt)",
    )
    ensemble.add_argument('--images', type=user_path, required=True, help='folder of test scans')
    ensemble.add_argument(
        '--labels', type=user_path, required=True, help='folder of their reference label maps, same file names'
    )
    ensemble.add_argument(
        '--tta',
        action=argparse.BooleanOptionalAction,
        default=MIRRORING_TTA,
        help="mirroring TTA, as predict.py's default",
    )
    ensemble.add_argument(
        '--timing-cases',
        type=integer(0),
        default=2,
        help='cases timed end to end, the ensemble against its first model alone (0: no timing)',
    )
    ensemble.add_argument('--repeats', type=integer(1), default=3, help='timing runs; the median is reported')
    ensemble.add_argument('--device', default='cpu')
