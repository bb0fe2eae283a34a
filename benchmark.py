"""Benchmarks: prediction speed against MONAI, and prediction memory.

Each measurement is repeated and its median reported, with MONAI's
equivalent measured in the same process for a ratio. MONAI is a
development-only dependency (``requirements-bench.txt``).

Example:
    python benchmark.py predict --checkpoint runs/la/best.pt --data ../shared/data/LA2018 --cases 5
    python benchmark.py memory --checkpoint runs/la/best.pt
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data import image_subject, load_nifti, read_dataset
from errors import run_cli
from files import save_nifti
from inference import sliding_window_logits
from predict import Predictor


def median_seconds(function, repeats: int) -> float:
    return statistics.median(_timed(function) for _ in range(repeats))


def interleaved_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median times of two functions run alternately, so drift on a shared machine hits both alike."""
    pairs = [(_timed(first), _timed(second)) for _ in range(repeats)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def predict_benchmark(args: argparse.Namespace) -> dict:
    """Seconds per case end to end (read → preprocess → infer → resample back → write), and the window loop against MONAI's."""
    from monai.inferers import sliding_window_inference

    torch.set_grad_enabled(False)
    predictor = Predictor(args.checkpoint, device=args.device, batch_size=args.batch_size, keep_largest=True)
    cases = read_dataset(args.data).cases[: args.cases]
    output = Path(tempfile.mkdtemp())

    def predict_all() -> None:
        for case in cases:
            mask, _, nifti = predictor.predict(case.image)
            save_nifti(mask, nifti.affine, output / f'{case.case_id}.nii.gz', like=nifti)

    predict_all()  # warm-up: first-call allocations and thread pools
    end_to_end = median_seconds(predict_all, args.repeats) / len(cases)

    subject = predictor.preprocessing.transform()(image_subject(cases[0].image, load_nifti(cases[0].image), predictor.channels))
    image = subject['image'].data
    options = predictor.window_options
    ours = lambda: sliding_window_logits(predictor.model, image, predictor.patch_size, **options)  # noqa: E731
    theirs = lambda: sliding_window_inference(  # noqa: E731
        image[None], predictor.patch_size, options['batch_size'], predictor.model,
        overlap=options['overlap'], mode='gaussian', sigma_scale=0.125, padding_mode='constant', cval=float(image.min()),
    )[0]
    ours(), theirs()
    ours_seconds, theirs_seconds = interleaved_medians(ours, theirs, args.repeats)
    difference = float((ours() - theirs()).abs().max())
    return {
        'cases': len(cases),
        'seconds_per_case_end_to_end': round(end_to_end, 3),
        'preprocessed_shape': list(image.shape[1:]),
        'sliding_window_seconds_ours': round(ours_seconds, 3),
        'sliding_window_seconds_monai': round(theirs_seconds, 3),
        'speed_ratio_monai_over_ours': round(theirs_seconds / ours_seconds, 3),
        'max_abs_logit_difference': difference,
    }


def memory_benchmark(args: argparse.Namespace) -> dict:
    """Peak RSS of predicting one large volume, measured in a fresh child process."""
    folder = Path(tempfile.mkdtemp())
    scan = folder / 'large.nii.gz'
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, size=args.shape).astype(np.float32)
    save_nifti(volume, np.diag([*args.spacing, 1.0]), scan)
    command = [sys.executable, str(Path(__file__).parent / 'predict.py'), '--checkpoint', str(args.checkpoint),
               '--input', str(scan), '--output', str(folder / 'out'), '--device', args.device]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {'shape': list(args.shape), 'spacing_mm': list(args.spacing), 'peak_rss_gib': round(peak_kib / 2**20, 2),
            'seconds_including_start_up': round(seconds, 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    predict = commands.add_parser('predict', help='seconds per case, and our sliding window against MONAI',
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    predict.add_argument('--checkpoint', type=Path, required=True)
    predict.add_argument('--data', type=Path, required=True, help='MSD-layout dataset whose first cases are predicted')
    predict.add_argument('--cases', type=int, default=5)
    predict.add_argument('--repeats', type=int, default=3, help='runs per measurement; the median is reported')
    predict.add_argument('--batch-size', type=int, default=2)
    predict.add_argument('--device', default='cpu')
    memory = commands.add_parser('memory', help='peak RSS of predicting one large synthetic volume',
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    memory.add_argument('--checkpoint', type=Path, required=True)
    memory.add_argument('--shape', type=int, nargs=3, default=(512, 512, 300))
    memory.add_argument('--spacing', type=float, nargs=3, default=(0.625, 0.625, 0.625))
    memory.add_argument('--device', default='cpu')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = predict_benchmark(args) if args.command == 'predict' else memory_benchmark(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
