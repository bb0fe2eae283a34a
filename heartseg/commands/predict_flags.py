"""``predict.py``'s flags. ``docs/generate_flags.py`` reads :func:`build_parser` for the flag reference."""

from __future__ import annotations

import argparse

from heartseg.cli import DefaultsHelpFormatter, Parser, integer, number, user_path
from heartseg.inference.prediction import MIRRORING_TTA, TTA_MIRRORING, TTA_MIRRORINGS
from heartseg.inference.sliding_window import BLENDINGS, DEFAULT_BLENDING, DEFAULT_WINDOW_BATCH
from heartseg.planning.config import DEFAULT_OVERLAP

# Reading and resampling the next case in a thread while this one predicts made a 2-core CPU 11 % slower
# (the two compete for the cores; BENCHMARKS.md "Quality control"), so it is off unless asked for.
PREFETCH = False


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        description="Predict label masks for new scans, in each scan's exact grid, say how far to trust each, "
        'and evaluate them.',
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        '--checkpoint',
        type=user_path,
        nargs='+',
        required=True,
        help='a best.pt or last.pt written by main.py, a run folder (its best.pt), an ONNX or TorchScript '
        'file written by export.py, or several: their ensemble. '
        "A cross-validation run folder means every fold's best.pt",
    )
    parser.add_argument(
        '--input',
        type=user_path,
        required=True,
        help="a .nii/.nii.gz scan, a folder of them (nnU-Net's <case>_0000 names give <case> masks), "
        'a dataset folder (its test scans, imagesTs/), '
        'or a dataset.json (its training cases, with their labels); MSD or nnU-Net v2 layout',
    )
    parser.add_argument('--output', type=user_path, required=True, help='folder for <case>.nii.gz masks (and metrics)')
    parser.add_argument(
        '--subset',
        choices=('all', 'training', 'validation'),
        default='all',
        help="with a dataset.json input: which cases of the checkpoint's run splits.json to predict "
        "(a cross-validation folder: each fold's validation cases, by that fold's model)",
    )
    parser.add_argument(
        '--labels', type=user_path, help='folder of reference <case>.nii.gz label maps: evaluate the predictions'
    )
    parser.add_argument(
        '--tta',
        action=argparse.BooleanOptionalAction,
        default=MIRRORING_TTA,
        help='mirroring test-time augmentation: the mean of the axis flips that --tta-mirroring names '
        '(--no-tta: 4 to 8 times faster)',
    )
    parser.add_argument(
        '--tta-mirroring',
        choices=TTA_MIRRORINGS,
        help='which flips TTA averages: all 8 axis flips (nnU-Net), or in-plane: for a model planned with thick '
        'slices (augmented in 2D), the 4 flips of its slice plane, in half the time; a 3D plan flips every axis '
        f'either way (default: {TTA_MIRRORING})',
    )
    parser.add_argument(
        '--keep-largest',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='keep only the largest connected component of every structure, or (--no-keep-largest) of none (default: '
        "a cross-validation folder's choice, made on its out-of-fold predictions as nnU-Net makes it; "
        'every structure for other models)',
    )
    parser.add_argument(
        '--save-probabilities',
        action='store_true',
        help='also write <case>_probabilities.nii.gz (float32, one channel per label)',
    )
    parser.add_argument(
        '--png', action='store_true', help='also write <case>.png with three orthogonal slices and the mask contour'
    )
    parser.add_argument(
        '--qc',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='quality control: qc.csv (predicted Dice, flag and reasons per case), '
        'summary.json\'s "qc" and review.html',
    )
    parser.add_argument(
        '--save-uncertainty',
        action='store_true',
        help='also write <case>_uncertainty.nii.gz: '
        'per-voxel entropy (bits) of the mean probability over TTA and models',
    )
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='predict every case again; without it, a run over a folder that was stopped skips the cases it finished',
    )
    parser.add_argument(
        '--prefetch',
        action=argparse.BooleanOptionalAction,
        default=PREFETCH,
        help='read and resample the next scan in a background thread while the current one predicts',
    )
    parser.add_argument(
        '--overlap', type=number(0, below=1), default=DEFAULT_OVERLAP, help='sliding-window overlap fraction'
    )
    parser.add_argument('--blending', choices=BLENDINGS, default=DEFAULT_BLENDING, help='window blending weights')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps')
    parser.add_argument(
        '--structures',
        help='the label values of the LV cavity, myocardium and RV cavity for function.csv, as LV=3,MYO=2,RV=1 '
        "(default: found by the model's label names, ACDC's LV, MYO, RV and common aliases; LV is required, the "
        'others are optional)',
    )
    parser.add_argument(
        '--ed-first',
        action='store_true',
        help="function.csv: end-diastole is each patient's first phase (UK Biobank), not its largest LV cavity",
    )
    parser.add_argument('--batch-size', type=integer(1), default=DEFAULT_WINDOW_BATCH, help='windows per forward pass')
    return parser
