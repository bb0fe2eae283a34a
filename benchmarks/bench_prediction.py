"""``predict``: sliding-window prediction speed against MONAI's.

Seconds per case end to end (read, preprocess, infer, resample back, write),
then our sliding-window loop against MONAI's ``sliding_window_inference`` on
one preprocessed case, alternating, with their largest logit difference.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_common import require_monai
from benchmarks.timing import interleaved_medians, median_seconds
from heartseg.cli import DefaultsHelpFormatter, integer, user_path
from heartseg.data.dataset import read_dataset
from heartseg.data.reading import image_subject, load_nifti
from heartseg.files import save_nifti
from heartseg.inference.prediction import Predictor
from heartseg.inference.sliding_window import sliding_window_logits


@torch.no_grad()  # without leaving grad mode off for whatever runs next in this process
def predict_benchmark(args: argparse.Namespace) -> dict:
    """Seconds per case end to end (read → preprocess → infer → resample back → write),
    and the window loop against MONAI's."""
    require_monai()
    from monai.inferers import sliding_window_inference

    predictor = Predictor(args.checkpoint, device=args.device, batch_size=args.batch_size, tta=args.tta)
    cases = read_dataset(args.data).cases[: args.cases]
    output = Path(tempfile.mkdtemp())

    def predict_all() -> None:
        for case in cases:
            mask, _, nifti = predictor.predict(case.image)
            save_nifti(mask, nifti.affine, output / f'{case.case_id}.nii.gz', like=nifti)

    predict_all()  # warm-up: first-call allocations and thread pools
    end_to_end = median_seconds(predict_all, args.repeats) / len(cases)

    model = predictor.models[0]
    subject = model.preprocessing(image_subject(cases[0].image, load_nifti(cases[0].image), predictor.channels))
    image = subject['image'].data
    options = predictor.window_options
    ours = lambda: sliding_window_logits(model.network, image, model.patch_size, **options)  # noqa: E731

    def theirs() -> torch.Tensor:
        with torch.autocast(
            predictor.device.type,
            dtype=options['amp_dtype'],
            enabled=options['amp_dtype'] is not None and predictor.device.type == 'cuda',
        ):
            return sliding_window_inference(
                image[None],
                model.patch_size,
                options['batch_size'],
                model.network,
                overlap=options['overlap'],
                mode='gaussian',
                sigma_scale=0.125,
                padding_mode='constant',
                cval=float(image.min()),
                sw_device=predictor.device,
                device='cpu',
            )[0].float()

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


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``predict`` subcommand and its flags."""
    predict = commands.add_parser(
        'predict', help='seconds per case, and our sliding window against MONAI', formatter_class=DefaultsHelpFormatter
    )
    predict.add_argument('--checkpoint', type=user_path, required=True)
    predict.add_argument(
        '--data', type=user_path, required=True, help='MSD-layout dataset whose first cases are predicted'
    )
    predict.add_argument('--cases', type=integer(1), default=5)
    predict.add_argument('--repeats', type=integer(1), default=3, help='runs per measurement; the median is reported')
    predict.add_argument('--batch-size', type=integer(1), default=2)
    predict.add_argument('--device', default='cpu')
    predict.add_argument(
        '--tta',
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mirroring TTA in the end-to-end timing (predict.py's default; the 1 s per case target is without)",
    )
