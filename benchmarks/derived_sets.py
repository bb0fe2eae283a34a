"""Datasets derived from real scans, for measuring what LA2018 alone cannot: several structures, thick slices.

- ``three-structures``: each atrium split along its principal axis into three
  mutually exclusive parts, its two ends (where the pulmonary veins and the
  appendage join) and its body: label 1 the body (the middle half of the
  atrium's length), 2 and 3 the ends. A training dataset is written as an
  nnU-Net v2 raw folder (images linked as ``<case>_0000.nii.gz``).
- ``thick-slices``: each scan resampled to slices ``--thickness`` mm apart
  along its last axis, each averaging its slab, the label resampled with it
  as training resamples labels (``benchmarks.degraded_set.thick_slices``).
  Written in the input's layout.
- ``resampled``: each scan and its label resampled to ``--spacing`` (linear;
  labels as training resamples them), for predicting scans whose size times
  spacing is not a whole number of the model's voxels. A folder of scans and
  labels, named by case.

The input is an MSD dataset folder (``--data``) or a pair of image and label
folders (``--images``, ``--labels``, for a test set). The copies inherit the
source's licence: write them to a folder git ignores, never into the repository.

Example:
    python -m benchmarks.derived_sets three-structures --data LA64 --output LA64_three
    python -m benchmarks.derived_sets thick-slices --images test16/images --labels test16/labels --output test16_thick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torchio as tio
from tqdm import tqdm

from benchmarks.degraded_set import thick_slices
from heartseg.cli import Parser, number, user_path
from heartseg.data.cases import folder_case_ids
from heartseg.data.dataset import read_dataset
from heartseg.errors import UserError, run_cli
from heartseg.files import atomic_write_text, ensure_writable_dir, save_nifti
from heartseg.preprocessing.preprocessing import resample_label

THREE_STRUCTURES = {'0': 'background', '1': 'atrial body', '2': 'lower end', '3': 'upper end'}
# The body is the middle half of the atrium's extent along its principal axis; a quarter at each end.
END_QUANTILE = 0.25


def split_along_principal_axis(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A binary mask → labels 1 (body), 2 and 3 (the ends), cut across its longest axis in millimetres.

    Example:
        >>> mask = np.zeros((40, 8, 8), bool); mask[:, 2:6, 2:6] = True
        >>> np.bincount(split_along_principal_axis(mask, np.eye(4)).ravel()).tolist()
        [1920, 320, 160, 160]
    """
    voxels = np.argwhere(mask)
    world = voxels @ affine[:3, :3].T
    centred = world - world.mean(axis=0)
    axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]
    axis *= np.sign(axis[np.argmax(np.abs(axis))])  # the same end is "upper" whatever the eigenvector's sign
    position = centred @ axis
    low, high = np.quantile(position, (END_QUANTILE, 1 - END_QUANTILE))
    labels = np.zeros(mask.shape, dtype=np.uint8)
    labels[tuple(voxels.T)] = np.where(position < low, 2, np.where(position > high, 3, 1))
    return labels


def input_cases(args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    if args.data is not None:
        return [(case.case_id, case.image, case.label) for case in read_dataset(args.data).cases]
    if args.images is None or args.labels is None:
        raise UserError(
            '--data', 'give a dataset folder (--data) or an image and a label folder (--images and --labels)'
        )
    scans = sorted(args.images.glob('*.nii*'))
    if not scans:
        raise UserError(args.images, 'holds no .nii or .nii.gz scans')
    return [(case_id, scan, args.labels / f'{case_id}.nii.gz') for scan, case_id in zip(scans, folder_case_ids(scans))]


def write_three_structures(cases: list[tuple[str, Path, Path]], output: Path, as_dataset: bool) -> None:
    images, labels = (
        (output / 'imagesTr', output / 'labelsTr') if as_dataset else (output / 'images', output / 'labels')
    )
    for folder in (images, labels):
        ensure_writable_dir(folder)
    for case_id, image, label in tqdm(cases, desc='Splitting', unit='case'):
        label_nifti = nib.load(label)
        split = split_along_principal_axis(np.asanyarray(label_nifti.dataobj) > 0, label_nifti.affine)
        save_nifti(split, label_nifti.affine, labels / f'{case_id}.nii.gz', like=label_nifti)
        link = images / (f'{case_id}_0000.nii.gz' if as_dataset else f'{case_id}.nii.gz')
        link.unlink(missing_ok=True)
        os.symlink(image.resolve(), link)
    if as_dataset:
        labels_by_name = {name: int(value) for value, name in THREE_STRUCTURES.items()}
        description = {
            'name': output.name,
            'channel_names': {'0': 'MRI'},
            'labels': labels_by_name,
            'numTraining': len(cases),
            'file_ending': '.nii.gz',
        }
        atomic_write_text(output / 'dataset.json', json.dumps(description, indent=1))


def write_thick_slices(
    cases: list[tuple[str, Path, Path]], output: Path, thickness: float, dataset: Path | None
) -> None:
    images, labels = (output / 'imagesTr', output / 'labelsTr') if dataset else (output / 'images', output / 'labels')
    for folder in (images, labels):
        ensure_writable_dir(folder)
    for case_id, image, label in tqdm(cases, desc='Thick slices', unit='case'):
        thick = thick_slices(tio.Subject(image=tio.ScalarImage(image), label=tio.LabelMap(label)), thickness)
        save_nifti(
            thick['image'].data[0].numpy().astype(np.float32), thick['image'].affine, images / f'{case_id}.nii.gz'
        )
        save_nifti(thick['label'].data[0].numpy().astype(np.uint8), thick['label'].affine, labels / f'{case_id}.nii.gz')
    if dataset:
        description = json.loads((dataset / 'dataset.json').read_text())
        description['training'] = [
            {'image': f'./imagesTr/{c}.nii.gz', 'label': f'./labelsTr/{c}.nii.gz'} for c, _, _ in cases
        ]
        description['name'] = output.name
        atomic_write_text(output / 'dataset.json', json.dumps(description, indent=1))


def write_resampled(cases: list[tuple[str, Path, Path]], output: Path, spacing: tuple[float, float, float]) -> None:
    for folder in ('images', 'labels'):
        ensure_writable_dir(output / folder)
    resample = tio.Resample(spacing)
    for case_id, image, label in tqdm(cases, desc='Resampling', unit='case'):
        scan = resample(tio.ScalarImage(image))
        save_nifti(scan.data[0].numpy().astype(np.float32), scan.affine, output / 'images' / f'{case_id}.nii.gz')
        resampled = resample_label(tio.LabelMap(label), resample)
        save_nifti(
            resampled.data[0].numpy().astype(np.uint8), resampled.affine, output / 'labels' / f'{case_id}.nii.gz'
        )


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('kind', choices=('three-structures', 'thick-slices', 'resampled'))
    parser.add_argument('--data', type=user_path, help='an MSD dataset folder to derive a training dataset from')
    parser.add_argument('--images', type=user_path, help='or: a folder of <case>.nii.gz scans (a test set) ...')
    parser.add_argument('--labels', type=user_path, help='... and the folder of their labels')
    parser.add_argument(
        '--output', type=user_path, required=True, help='where to write (git-ignored, never in the repository)'
    )
    parser.add_argument(
        '--thickness',
        type=number(0, inclusive=False),
        default=5.0,
        help='thick-slices: mm between slices (default %(default)s)',
    )
    parser.add_argument(
        '--spacing',
        type=number(0, inclusive=False),
        nargs=3,
        default=(1.37, 1.37, 10.0),
        help='resampled: the new spacing in mm (default %(default)s)',
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = input_cases(args)
    if args.kind == 'three-structures':
        write_three_structures(cases, args.output, as_dataset=args.data is not None)
    elif args.kind == 'resampled':
        write_resampled(cases, args.output, tuple(args.spacing))
    else:
        write_thick_slices(cases, args.output, args.thickness, args.data)
    print(f'Wrote {len(cases)} {args.kind} cases to {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
