"""A degraded test set: each scan damaged the ways real scans are, at three strengths, labels carried along.

Damage kinds: noise, bias field, motion, ghosting, thick slices, low in-plane
resolution, a field of view that cuts the structure, and another contrast.
Where the damage changes the grid (slices, in-plane resolution, the cut field
of view), the reference label is resampled or cropped with the image, so each
damaged mask is scored in its own grid. Every case is seeded by its name, so
the set is the same on every machine. The copy inherits the source's licence:
write it to a folder git ignores, never into the repository.

Example:
    python -m benchmarks.degraded_set --images test16/images --labels test16/labels --output degraded/
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections.abc import Callable

import numpy as np
import torch
import torchio as tio
from tqdm import tqdm

from heartseg.cli import Parser, user_path
from heartseg.data.cases import folder_case_ids
from heartseg.errors import UserError, run_cli
from heartseg.files import ensure_writable_dir, save_nifti
from heartseg.preprocessing.preprocessing import resample_label

Damage = Callable[[tio.Subject, float], tio.Subject]
FWHM_PER_SIGMA = 2.355


def noise(subject: tio.Subject, strength: float) -> tio.Subject:
    """Gaussian noise with a standard deviation of ``strength`` times the image's."""
    std = strength * float(subject['image'].data.float().std())
    return tio.RandomNoise(std=(std, std))(subject)


def bias(subject: tio.Subject, strength: float) -> tio.Subject:
    return tio.RandomBiasField(coefficients=strength, order=3)(subject)


def motion(subject: tio.Subject, strength: float) -> tio.Subject:
    """``strength`` degrees and millimetres of movement, in up to four positions."""
    return tio.RandomMotion(
        degrees=strength, translation=strength, num_transforms=2 + int(strength // 8), include=['image']
    )(subject)


def ghosting(subject: tio.Subject, strength: float) -> tio.Subject:
    return tio.RandomGhosting(num_ghosts=(4, 8), intensity=(strength, strength), include=['image'])(subject)


def thick_slices(subject: tio.Subject, thickness: float) -> tio.Subject:
    """Slices ``thickness`` mm apart along the last axis, each averaging its slab."""
    spacing = subject['image'].spacing
    return _coarser(subject, (spacing[0], spacing[1], thickness))


def fewer_slices(subject: tio.Subject, factor: float) -> tio.Subject:
    """Slices ``factor`` times further apart than the scan's own (LA2018's 0.625 mm: 2.5, 5 and 8 mm)."""
    return thick_slices(subject, factor * subject['image'].spacing[2])


def low_in_plane(subject: tio.Subject, factor: float) -> tio.Subject:
    """In-plane voxels ``factor`` times the scan's own (LA2018's 0.625 mm: 1.5, 2.5 and 3.5 mm)."""
    spacing = subject['image'].spacing
    return _coarser(subject, (factor * spacing[0], factor * spacing[1], spacing[2]))


def _coarser(subject: tio.Subject, spacing: tuple[float, float, float]) -> tio.Subject:
    """The image blurred to the new voxel's profile and resampled; the label resampled as training does."""
    blur_mm = [max(0.0, new**2 - old**2) ** 0.5 / FWHM_PER_SIGMA for new, old in zip(spacing, subject['image'].spacing)]
    resample = tio.Resample(spacing)
    image = resample(tio.Blur(std=blur_mm)(subject['image']))
    return tio.Subject(image=image, label=resample_label(subject['label'], resample))


def cut_field_of_view(subject: tio.Subject, fraction: float) -> tio.Subject:
    """Crop the last axis so that ``fraction`` of the structure's extent along it falls outside."""
    present = np.flatnonzero(subject['label'].data[0].numpy().any(axis=(0, 1)))
    first, last = int(present[0]), int(present[-1])
    keep_until = last - int(round(fraction * (last - first + 1)))
    return tio.Crop((0, 0, 0, 0, 0, subject['image'].shape[3] - 1 - keep_until))(subject)


def other_contrast(subject: tio.Subject, strength: float) -> tio.Subject:
    """A gamma of ``strength`` on the image scaled to [0, 1]; a negative strength also inverts it."""
    data = subject['image'].data.float()
    low, high = torch.quantile(data.flatten()[::97], torch.tensor([0.0, 1.0]))
    scaled = ((data - low) / (high - low)).clamp(0, 1)
    scaled = 1 - scaled if strength < 0 else scaled
    subject['image'].set_data(scaled ** abs(strength) * float(high))
    return subject


DAMAGES: dict[str, tuple[Damage, tuple[float, ...]]] = {
    'noise': (noise, (0.3, 0.7, 1.5)),
    'bias': (bias, (0.4, 0.8, 1.2)),
    'motion': (motion, (4.0, 10.0, 20.0)),
    'ghosting': (ghosting, (0.4, 0.8, 1.5)),
    'slices': (fewer_slices, (4.0, 8.0, 12.8)),
    'inplane': (low_in_plane, (2.4, 4.0, 5.6)),
    'fov': (cut_field_of_view, (0.2, 0.4, 0.6)),
    'contrast': (other_contrast, (2.5, 0.4, -1.0)),
}


def variants(subject: tio.Subject, case_id: str, levels: tuple[int, ...] = (1, 2, 3)) -> list[tuple[str, tio.Subject]]:
    """The clean subject, then every damage at each strength level asked for, each seeded by its name."""
    out = [(f'{case_id}__clean', subject)]
    for kind, (damage, strengths) in DAMAGES.items():
        for level, strength in enumerate(strengths, 1):
            if level not in levels:
                continue
            name = f'{case_id}__{kind}{level}'
            torch.manual_seed(zlib.crc32(name.encode()))
            out.append((name, damage(_copy(subject), strength)))
    return out


def _copy(subject: tio.Subject) -> tio.Subject:
    return tio.Subject(
        image=tio.ScalarImage(tensor=subject['image'].data.clone().float(), affine=subject['image'].affine.copy()),
        label=tio.LabelMap(tensor=subject['label'].data.clone(), affine=subject['label'].affine.copy()),
    )


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--images',
        type=user_path,
        required=True,
        help="folder of clean <case>.nii.gz scans (or nnU-Net's <case>_0000.nii.gz)",
    )
    parser.add_argument(
        '--labels', type=user_path, required=True, help='folder of their <case>.nii.gz reference labels'
    )
    parser.add_argument(
        '--output',
        type=user_path,
        required=True,
        help='folder for images/ and labels/ (git-ignored, never in the repository)',
    )
    parser.add_argument(
        '--strength-levels',
        type=int,
        nargs='+',
        choices=(1, 2, 3),
        default=[1, 2, 3],
        help="which of each damage's three strengths to write (default: all)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scans = sorted(args.images.glob('*.nii*'))
    if not scans:
        raise UserError(args.images, 'holds no .nii or .nii.gz scans')
    for folder in ('images', 'labels'):
        ensure_writable_dir(args.output / folder)
    for scan, case_id in tqdm(list(zip(scans, folder_case_ids(scans))), desc='Damaging', unit='case'):
        label = args.labels / f'{case_id}.nii.gz'
        if not label.is_file():
            raise UserError(label, 'reference label not found')
        subject = tio.Subject(image=tio.ScalarImage(scan), label=tio.LabelMap(label))
        for name, damaged in variants(subject, case_id, tuple(args.strength_levels)):
            save_nifti(
                damaged['image'].data[0].numpy().astype(np.float32),
                damaged['image'].affine,
                args.output / 'images' / f'{name}.nii.gz',
            )
            save_nifti(
                damaged['label'].data[0].numpy().astype(np.uint8),
                damaged['label'].affine,
                args.output / 'labels' / f'{name}.nii.gz',
            )
    print(f'Wrote {len(scans)} x {1 + len(DAMAGES) * len(set(args.strength_levels))} cases to {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
