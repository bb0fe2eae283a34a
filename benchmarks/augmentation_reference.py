"""Our augmentation against nnU-Net's own (batchgeneratorsv2), patch by patch in one loader process: which to keep.

Both cut patches around the same label-balanced centres of the same
preprocessed cases, at the plan main.py makes for ``--data`` (thin patches in
dummy 2D), and apply nnU-Net v2's training transforms:

- ours: :func:`heartseg.training.augmentation.sample_patch` (rotation, scaling and
  mirroring from the volume around the patch) and ``Augmentation.intensity``;
- nnU-Net's: the region its loader crops (its ``get_patch_size``, enlarged for
  rotation and scaling, padded at the volume's edge), then the
  batchgeneratorsv2 transforms ``nnUNetTrainer.get_training_transforms``
  builds, in its axis order (the thick axis first).

Each runs with one torch thread, as in a loader worker; the figure is
patches/s, the median of ``--repeats`` runs, alternating the two.
batchgeneratorsv2 is a benchmark-only dependency (requirements-bench.txt).

Example:
    python -m benchmarks.augmentation_reference --data ../shared/data/LA2018 --repeats 3
    python -m benchmarks.augmentation_reference --data ../shared/data/ACDC --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.benchmark import training_setup
from heartseg.cli import Parser, integer, user_path
from heartseg.errors import UserError, run_cli
from heartseg.planning.plan import dummy_2d_axis
from heartseg.training.augmentation import GAMMA, LOW_RESOLUTION, ROTATION, SCALING, sample_patch
from heartseg.training.recipe import build_augmentation, limit_threads
from heartseg.training.sampling import PatchCorners, pad_to_patch

# nnU-Net's initial patch divides by the smallest zoom it assumes (its own comment admits 0.85 is not the 0.7 it uses).
NNUNET_INITIAL_PATCH_ZOOM = 0.85


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=user_path, required=True, help='dataset folder (MSD or nnU-Net v2)')
    parser.add_argument('--cases', type=integer(1), default=8, help='how many of the first cases feed the patches')
    parser.add_argument('--patches', type=integer(1), default=64, help='patches per run')
    parser.add_argument('--repeats', type=integer(1), default=3, help='runs of each; the median is reported')
    parser.add_argument(
        'main_flags', nargs='*', help='main.py flags (after --), e.g. -- --spacing 0.625 --patch-size 144 128 80'
    )
    return parser


def nnunet_transforms(patch_size: tuple[int, ...], dummy_2d: bool):
    """``nnUNetTrainer.get_training_transforms`` for a 3D patch (thick axis first), without deep supervision."""
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

    degrees = ROTATION['degrees_dummy_2d'] if dummy_2d else ROTATION['degrees']
    rotation = (-math.radians(degrees), math.radians(degrees))
    transforms = [Convert3DTo2DTransform()] if dummy_2d else []
    transforms.append(
        SpatialTransform(
            patch_size[1:] if dummy_2d else patch_size,
            patch_center_dist_from_border=0,
            random_crop=False,
            p_elastic_deform=0,
            p_rotation=ROTATION['p'],
            rotation=rotation,
            p_scaling=SCALING['p'],
            scaling=SCALING['zoom'],
            p_synchronize_scaling_across_axes=1,
            bg_style_seg_sampling=False,
            border_mode_seg='constant',
            padding_value_seg=-1,
        )
    )
    transforms += [Convert2DTo3DTransform()] if dummy_2d else []
    transforms += [
        RandomTransform(
            GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
            apply_probability=0.1,
        ),
        RandomTransform(
            GaussianBlurTransform(
                blur_sigma=(0.5, 1.0),
                synchronize_channels=False,
                synchronize_axes=False,
                p_per_channel=0.5,
                benchmark=True,
            ),
            apply_probability=0.2,
        ),
        RandomTransform(
            MultiplicativeBrightnessTransform(
                multiplier_range=BGContrast((0.75, 1.25)), synchronize_channels=False, p_per_channel=1
            ),
            apply_probability=0.15,
        ),
        RandomTransform(
            ContrastTransform(
                contrast_range=BGContrast((0.75, 1.25)),
                preserve_range=True,
                synchronize_channels=False,
                p_per_channel=1,
            ),
            apply_probability=0.15,
        ),
        RandomTransform(
            SimulateLowResolutionTransform(
                scale=LOW_RESOLUTION['zoom'],
                synchronize_channels=False,
                synchronize_axes=True,
                ignore_axes=(0,) if dummy_2d else None,
                allowed_channels=None,
                p_per_channel=0.5,
            ),
            apply_probability=LOW_RESOLUTION['p'],
        ),
        RandomTransform(
            GammaTransform(
                gamma=BGContrast(GAMMA['gamma']),
                p_invert_image=1,
                synchronize_channels=False,
                p_per_channel=1,
                p_retain_stats=1,
            ),
            apply_probability=GAMMA['p_inverted'],
        ),
        RandomTransform(
            GammaTransform(
                gamma=BGContrast(GAMMA['gamma']),
                p_invert_image=0,
                synchronize_channels=False,
                p_per_channel=1,
                p_retain_stats=1,
            ),
            apply_probability=GAMMA['p'],
        ),
        MirrorTransform(allowed_axes=(0, 1, 2)),
        RemoveLabelTansform(-1, 0),
    ]
    return ComposeTransforms(transforms)


def nnunet_initial_patch(patch_size: tuple[int, ...], dummy_2d: bool) -> tuple[int, ...]:
    """nnU-Net's ``get_patch_size``: the patch's extent after the largest
    rotation about each axis, over the smallest zoom."""
    angle = min(math.radians(ROTATION['degrees_dummy_2d'] if dummy_2d else ROTATION['degrees']), math.pi / 2)
    size = np.asarray(patch_size, dtype=float)
    extent = size.copy()
    for axis in range(3):
        rotation = np.eye(3)
        others = [a for a in range(3) if a != axis]
        rotation[np.ix_(others, others)] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        extent = np.maximum(extent, np.abs(rotation @ size))
    initial = (extent / NNUNET_INITIAL_PATCH_ZOOM).astype(int)
    if dummy_2d:
        initial[0] = patch_size[0]
    return tuple(int(s) for s in initial)


def centres(subjects: list, patch_size: tuple[int, ...], count: int, config) -> list[tuple]:
    """``count`` label-balanced (case, patch corner, padded image, padded label), as our loader draws them."""
    rng = np.random.default_rng(0)
    foreground_labels = config.outputs.foreground_labels
    share = config.foreground_probability / len(foreground_labels)
    probabilities = {0: 1 - config.foreground_probability, **{label: share for label in foreground_labels}}
    labels = [pad_to_patch(s['label'].data, patch_size, torch.zeros(1)) for s in subjects]
    images = [pad_to_patch(s['image'].data, patch_size, s['image'].data.amin(dim=(1, 2, 3))) for s in subjects]
    corners = [PatchCorners(label, patch_size, probabilities) for label in labels]
    return [
        (int(case), np.asarray(corners[case].draw(rng)), images[case], labels[case])
        for case in rng.integers(len(subjects), size=count)
    ]


def ours(patches: list, config, voxel_to_world: list) -> float:
    augmentation = build_augmentation(config)
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    for case, corner, image, label in patches:
        patch_image, _ = sample_patch(
            image, label, tuple(corner), config.patch_size, voxel_to_world[case], augmentation.draw_spatial(rng)
        )
        augmentation.intensity(patch_image, augmentation.draw_intensity(rng, channels=patch_image.shape[0]))
    return len(patches) / (time.perf_counter() - started)


def theirs(patches: list, config, thick: int) -> float:
    order = [thick, *(axis for axis in range(3) if axis != thick)]  # nnU-Net's transpose: the thickest axis first
    patch = tuple(config.patch_size[axis] for axis in order)
    dummy_2d = dummy_2d_axis(config.target_spacing, config.patch_size) is not None
    transforms, initial = nnunet_transforms(patch, dummy_2d), nnunet_initial_patch(patch, dummy_2d)
    started = time.perf_counter()
    for _, corner, image, label in patches:
        centre = np.asarray(corner)[order] + np.asarray(patch) // 2
        region_image = crop_padded(image.permute(0, *(a + 1 for a in order)), centre, initial, float(image.min()))
        region_label = crop_padded(label.permute(0, *(a + 1 for a in order)).to(torch.int16), centre, initial, -1)
        transforms(image=region_image, segmentation=region_label)
    return len(patches) / (time.perf_counter() - started)


def crop_padded(volume: torch.Tensor, centre: np.ndarray, size: tuple[int, ...], pad: float) -> torch.Tensor:
    """The ``size`` region around ``centre``,
    padded with ``pad`` where it leaves the volume (nnU-Net's crop_and_pad_nd)."""
    low = centre - np.asarray(size) // 2
    region = torch.full((volume.shape[0], *size), pad, dtype=volume.dtype)
    start, stop = np.maximum(low, 0), np.minimum(low + size, volume.shape[1:])
    if np.all(stop > start):
        region[(slice(None), *(slice(a - o, b - o) for a, b, o in zip(start, stop, low)))] = volume[
            (slice(None), *(slice(a, b) for a, b in zip(start, stop)))
        ]
    return region


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import batchgeneratorsv2  # noqa: F401
    except ImportError:
        raise UserError(
            'batchgeneratorsv2',
            'not installed; it is a benchmark-only dependency: pip install -r requirements-bench.txt',
        ) from None
    setup = argparse.Namespace(data=args.data, main_flags=args.main_flags, steps=1, cases=args.cases)
    config, subjects = training_setup(setup)
    patches = centres(subjects, config.patch_size, args.patches, config)
    voxel_to_world = [s['image'].affine[:3, :3] for s in subjects]
    thick = int(np.argmax(config.target_spacing))
    limit_threads(1)
    runs = {'ours': [], 'nnunet': []}
    for _ in range(args.repeats):
        runs['ours'].append(ours(patches, config, voxel_to_world))
        runs['nnunet'].append(theirs(patches, config, thick))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    print(
        json.dumps(
            {
                'plan': {
                    'target_spacing': config.target_spacing,
                    'patch_size': config.patch_size,
                    'dummy_2d': dummy_2d_axis(config.target_spacing, config.patch_size) is not None,
                },
                'patches_per_run': args.patches,
                'threads': 1,
                'patches_per_s': {name: [round(v, 2) for v in values] for name, values in runs.items()},
                'median_patches_per_s': {name: round(v, 2) for name, v in medians.items()},
                'nnunet_over_ours': round(medians['nnunet'] / medians['ours'], 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
