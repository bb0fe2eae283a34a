"""``qc``: ``predict.py``'s seconds per case with and without quality control and the background prefetch."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.bench_common import device_name
from benchmarks.timing import timed
from heartseg.cli import DefaultsHelpFormatter, integer, user_path
from heartseg.commands.predict_inputs import NIFTI_SUFFIXES
from heartseg.devices import select_device
from heartseg.errors import UserError

QC_VARIANTS = {
    'no_qc_no_prefetch': ['--no-qc', '--no-prefetch'],
    'qc_no_prefetch': ['--no-prefetch'],
    'no_qc_prefetch': ['--no-qc', '--prefetch'],
    'qc_prefetch': ['--prefetch'],
}


def qc_benchmark(args: argparse.Namespace) -> dict:
    """Seconds per case of ``predict.py`` with and without QC, and with and without the background prefetch.

    Every variant predicts the same cases into a fresh folder, in turn within each
    repeat, so drift on a shared machine hits all alike.
    """
    from contextlib import redirect_stdout
    from io import StringIO

    import predict

    images = (
        sorted(p for p in args.images.iterdir() if p.name.endswith(NIFTI_SUFFIXES))[: args.cases]
        if args.images.is_dir()
        else []
    )
    if not images:
        raise UserError(args.images, 'not a folder of NIfTI scans')
    folder = Path(tempfile.mkdtemp())
    (folder / 'in').mkdir()
    for image in images:
        (folder / 'in' / image.name).symlink_to(image.resolve())
    result: dict = {'cases': len(images), 'device': device_name(select_device(args.device))}
    for tta in ('--tta', '--no-tta'):
        times: dict[str, list[float]] = {name: [] for name in QC_VARIANTS}
        for repeat in range(args.repeats + 1):  # the first round warms caches and is not counted
            for name, flags in QC_VARIANTS.items():
                argv = [
                    '--checkpoint',
                    str(args.checkpoint),
                    '--input',
                    str(folder / 'in'),
                    '--output',
                    str(folder / f'out_{name}'),
                    '--device',
                    args.device,
                    '--overwrite',
                    tta,
                    *flags,
                ]
                with redirect_stdout(StringIO()):
                    seconds = timed(lambda: predict.main(argv))
                if repeat:
                    times[name].append(seconds / len(images))
        medians = {name: statistics.median(values) for name, values in times.items()}
        result[tta.removeprefix('--').replace('-', '_')] = {
            'seconds_per_case': {name: round(value, 3) for name, value in medians.items()},
            'qc_added_seconds_per_case': round(medians['qc_no_prefetch'] - medians['no_qc_no_prefetch'], 3),
            'qc_time_ratio': round(medians['qc_no_prefetch'] / medians['no_qc_no_prefetch'], 3),
            'qc_time_ratio_with_prefetch': round(medians['qc_prefetch'] / medians['no_qc_prefetch'], 3),
            'prefetch_speed_ratio': round(medians['qc_no_prefetch'] / medians['qc_prefetch'], 3),
        }
    return result


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``qc`` subcommand and its flags."""
    qc = commands.add_parser(
        'qc',
        help="predict.py's seconds per case with and without quality control and the background prefetch",
        formatter_class=DefaultsHelpFormatter,
    )
    qc.add_argument('--checkpoint', type=user_path, required=True)
    qc.add_argument('--images', type=user_path, required=True, help='folder of scans; its first --cases are predicted')
    qc.add_argument('--cases', type=integer(1), default=4)
    qc.add_argument(
        '--repeats', type=integer(1), default=3, help='runs per variant after one warm-up; the median is reported'
    )
    qc.add_argument('--device', default='cpu')
