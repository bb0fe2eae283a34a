"""How sure a prediction folder's probabilities are on the faces of each scan, against one voxel in from them.

Reads the ``<case>_probabilities.nii.gz`` files of ``predict.py --save-probabilities``
(one channel per structure; a softmax's background is one minus their sum). A
voxel is *unsure* when its most probable class is below 0.5. A resampler that
fills the input's outer faces with logit 0 gives a band of unsure voxels there
(a probability of 0.5, or 1/C for every class of a softmax) wherever the
model's grid stops short of them; the next voxels in are as sure as the rest.
Reported per scan and pooled: the unsure share of each scan's most unsure face,
and of the slab one voxel in from it.

Example:
    python -m benchmarks.face_band predictions/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from heartseg.cli import Parser, user_path
from heartseg.errors import UserError, run_cli

UNSURE_BELOW = 0.5


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('predictions', type=user_path, help='a predict.py --save-probabilities output folder')
    parser.add_argument(
        '--softmax',
        action='store_true',
        help="the channels are a softmax's structures (background is one minus their sum)",
    )
    return parser


def unsure_shares(path: Path, softmax: bool) -> tuple[float, float]:
    """The unsure share of the most unsure of the six faces, and of the slab one voxel in from that face."""
    probabilities = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    probabilities = probabilities[..., None] if probabilities.ndim == 3 else probabilities
    classes = (
        np.concatenate([1 - probabilities.sum(-1, keepdims=True), probabilities], -1)
        if softmax
        else np.concatenate([1 - probabilities, probabilities], -1)
    )
    unsure = classes.max(-1) < UNSURE_BELOW
    faces = [
        (float(np.take(unsure, index, axis).mean()), float(np.take(unsure, index + step, axis).mean()))
        for axis in range(3)
        for index, step in ((0, 1), (-1, -1))
        if unsure.shape[axis] > 2
    ]
    return max(faces)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    files = sorted(args.predictions.glob('*_probabilities.nii.gz'))
    if not files:
        raise UserError(args.predictions, 'holds no <case>_probabilities.nii.gz; predict with --save-probabilities')
    per_case = {path.name.removesuffix('_probabilities.nii.gz'): unsure_shares(path, args.softmax) for path in files}
    faces, inner = zip(*per_case.values())
    print(
        json.dumps(
            {
                'cases': len(per_case),
                'unsure_share_of_the_most_unsure_face': round(float(np.mean(faces)), 4),
                'unsure_share_one_voxel_in_from_it': round(float(np.mean(inner)), 4),
                'cases_with_a_face_over_half_unsure': sum(f > 0.5 for f in faces),
                'per_case': {case: [round(f, 4), round(i, 4)] for case, (f, i) in per_case.items()},
            },
            indent=1,
        )
    )
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
