"""Training augmentation as tensor operations: one implementation, in the loader or on the training device.

The transforms and ranges are nnU-Net v2's (``nnUNetTrainer.get_training_transforms``):

- **Dummy 2D** for thin patches, as nnU-Net switches to it when the patch's
  longest axis is over ``ANISOTROPY_THRESHOLD`` (3) times its thick-slice
  axis (:func:`dummy_2d_axis`): rotation (±180°) about the thick axis only,
  scaling only across it, and simulated low resolution that leaves it alone.
  Each output voxel then comes from its own slice, never from a blend across
  a 10 mm stack, and no rotated slice pulls padding in from above or below.
- **Spatial** (rotation, scaling, mirroring) always runs in the loader, where
  the case's whole volume is. The patch is sampled from the volume around it,
  as nnU-Net cuts a larger region before rotating, so rotation and scaling
  bring in real voxels: only where a voxel's source lies outside the whole
  volume is it padding (the case's minimum, labelled background). Labels are
  sampled nearest, so they stay exact; without rotation or scaling the patch
  is an exact crop.
- **Intensity** (noise, blur, brightness, contrast, simulated low resolution,
  gamma and inverted gamma) runs in the loader, patch by patch, or on the
  training device, batch by batch (``--augment-on``). Gamma rescales each
  channel to [0, 1], applies γ, then restores its mean and spread, so it suits
  z-scored images, whose negative values a plain power would warp.

Every random number comes from the patch's own seeded generator, in the loader,
so the patch stream is a pure function of ``(seed, epoch, index)`` in both places.

Example:
    >>> augment = Augmentation('default')
    >>> rng = np.random.default_rng(0)
    >>> volume, label = torch.randn(1, 40, 40, 40), torch.zeros(1, 40, 40, 40, dtype=torch.uint8)
    >>> image, label = sample_patch(volume, label, (4, 4, 4), (32, 32, 32), np.eye(3), augment.draw_spatial(rng))
    >>> augment.intensity(image, augment.draw_intensity(rng, channels=1)).shape, label.unique().tolist()
    (torch.Size([1, 32, 32, 32]), [0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from heartseg.data.fingerprint import rotation_matrix

STRENGTHS = ('none', 'light', 'default')
# Where the intensity transforms run: in the loader workers, patch by patch, or on the training device, batch by batch.
PLACES = ('loader', 'device')

# nnU-Net v2's transforms and ranges. Each transform is applied with probability p.
FLIP_AXES = (0, 1, 2)
FLIP_PROBABILITY = 0.5  # per axis
# All three angles drawn together, about the patch centre, in millimetres; in dummy 2D one angle, about the thick axis.
ROTATION = {'degrees': 30.0, 'degrees_dummy_2d': 180.0, 'p': 0.2}
SCALING = {
    'zoom': (0.7, 1.4),
    'p': 0.2,
}  # the content magnified by one factor on every axis (in dummy 2D, across the thick one)
# batchgeneratorsv2 names this range noise_variance but draws the standard deviation from it.
NOISE = {'std': (0.0, 0.1), 'p': 0.1}
BLUR = {'sigma': (0.5, 1.0), 'p': 0.2, 'p_per_channel': 0.5}  # sigma in voxels, drawn per axis
# Brightness, contrast and gamma factors are drawn as nnU-Net's BGContrast draws them (:func:`below_or_above_one`).
BRIGHTNESS = {'factor': (0.75, 1.25), 'p': 0.15}
CONTRAST = {'factor': (0.75, 1.25), 'p': 0.15}  # about the mean, clipped to the channel's range
LOW_RESOLUTION = {
    'zoom': (0.5, 1.0),
    'p': 0.25,
    'p_per_channel': 0.5,
}  # down nearest, up trilinear; one zoom for the axes it changes
GAMMA = {'gamma': (0.7, 1.5), 'p': 0.3, 'p_inverted': 0.1}


@dataclass(frozen=True)
class SpatialDraw:
    """One patch's spatial augmentation: the mirrored axes, and the content motion in world millimetres (None: none)."""

    flips: tuple[bool, bool, bool]
    motion: np.ndarray | None


UNCHANGED = SpatialDraw((False, False, False), None)


class Augmentation:
    """Draw per patch (in the loader), and apply the intensity transforms in either
    place (:func:`sample_patch` the spatial ones).

    Args:
        strength: ``'light'`` (mirroring) or ``'default'`` (everything above).
        place: Where :meth:`apply_intensity` runs, ``'loader'`` or ``'device'``.
        thick_axis: The patch axis of dummy 2D augmentation (:func:`dummy_2d_axis`), or None for 3D.
    """

    def __init__(self, strength: str, place: str = 'loader', thick_axis: int | None = None):
        assert strength in STRENGTHS[1:], f"augmentation strength must be 'light' or 'default', got {strength!r}"
        assert place in PLACES, f'augmentation place must be one of {PLACES}, got {place!r}'
        self.full = strength == 'default'
        self.on_device = place == 'device'
        self.thick_axis = thick_axis
        # The axes that scaling and simulated low resolution change: all three, or the plane across the thick axis.
        self.in_plane = np.array([axis != thick_axis for axis in range(3)])

    # -- spatial, in the loader ----------------------------------------------

    def draw_spatial(self, rng: np.random.Generator) -> SpatialDraw:
        flips = tuple(axis in FLIP_AXES and bool(rng.random() < FLIP_PROBABILITY) for axis in range(3))
        rotation, zoom = np.eye(3), 1.0
        if self.full and rng.random() < ROTATION['p']:
            rotation = rotation_matrix(self._draw_angles(rng))
        if self.full and rng.random() < SCALING['p']:
            zoom = float(rng.uniform(*SCALING['zoom']))
        moved = zoom != 1.0 or not np.array_equal(rotation, np.eye(3))
        return SpatialDraw(flips, np.diag(np.where(self.in_plane, zoom, 1.0)) @ rotation if moved else None)

    def _draw_angles(self, rng: np.random.Generator) -> np.ndarray:
        """Degrees about x, y and z: all three within ±30°, or in dummy 2D one within ±180° about the thick axis."""
        if self.thick_axis is None:
            return rng.uniform(-ROTATION['degrees'], ROTATION['degrees'], 3)
        angles = np.zeros(3)
        angles[self.thick_axis] = rng.uniform(-ROTATION['degrees_dummy_2d'], ROTATION['degrees_dummy_2d'])
        return angles

    # -- intensity, in the loader or on the device -----------------------------

    def draw_intensity(self, rng: np.random.Generator, channels: int) -> dict[str, torch.Tensor]:
        """One patch's intensity parameters (``'default'`` only); neutral values where a transform is not applied."""

        def applied(p: float) -> bool:
            return bool(rng.random() < p)

        def per_channel(p: float, low: float, high: float, neutral: float = 1.0) -> torch.Tensor:
            return torch.tensor(
                [rng.uniform(low, high) if applied(p) else neutral for _ in range(channels)], dtype=torch.float32
            )

        def factor(transform: dict, key: str) -> torch.Tensor:
            return torch.tensor(
                below_or_above_one(rng, *transform[key]) if applied(transform['p']) else 1.0, dtype=torch.float32
            )

        def gammas() -> torch.Tensor:
            return torch.tensor(
                [below_or_above_one(rng, *GAMMA['gamma']) for _ in range(channels)], dtype=torch.float32
            )

        std = rng.uniform(*NOISE['std']) if applied(NOISE['p']) else 0.0
        blur = np.zeros((channels, 3))
        if applied(BLUR['p']):
            blur = np.array(
                [
                    rng.uniform(*BLUR['sigma'], 3) if applied(BLUR['p_per_channel']) else np.zeros(3)
                    for _ in range(channels)
                ]
            )
        brightness, contrast = factor(BRIGHTNESS, 'factor'), factor(CONTRAST, 'factor')
        low_resolution = torch.ones(channels, 3)
        if applied(LOW_RESOLUTION['p']):
            zooms = per_channel(LOW_RESOLUTION['p_per_channel'], *LOW_RESOLUTION['zoom'])
            low_resolution[:, torch.from_numpy(self.in_plane)] = zooms[:, None]
        inverted_gamma = gammas() if applied(GAMMA['p_inverted']) else torch.ones(channels)
        gamma = gammas() if applied(GAMMA['p']) else torch.ones(channels)
        return {
            'noise_std': torch.tensor(std, dtype=torch.float32),
            'noise_seed': torch.tensor(int(rng.integers(2**62))),
            'blur_sigma': torch.tensor(blur, dtype=torch.float32),
            'brightness': brightness,
            'contrast': contrast,
            'low_resolution': low_resolution,
            'inverted_gamma': inverted_gamma,
            'gamma': gamma,
        }

    def intensity(self, image: torch.Tensor, parameters: dict[str, torch.Tensor]) -> torch.Tensor:
        """One ``(C, X, Y, Z)`` patch augmented with its parameters, in nnU-Net's order; a new tensor."""
        return _intensity(image.clone(), {name: value.to(image.device) for name, value in parameters.items()})

    def apply_intensity(self, images: torch.Tensor, parameters: dict[str, torch.Tensor]) -> torch.Tensor:
        """A ``(B, C, X, Y, Z)`` batch augmented with the collated parameters of its patches; a new tensor."""
        return torch.stack(
            [
                self.intensity(image, {name: value[index] for name, value in parameters.items()})
                for index, image in enumerate(images)
            ]
        )


def below_or_above_one(rng: np.random.Generator, low: float, high: float) -> float:
    """A factor from ``[low, high]`` drawn as nnU-Net's ``BGContrast`` draws it:
    ``U(low, 1)`` half of the time, else ``U(1, high)``.

    A gamma range of (0.7, 1.5) then darkens as often as it brightens, where a
    plain ``U(0.7, 1.5)`` would draw below 1 only 3 times in 8.
    """
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1))
    return float(rng.uniform(max(low, 1), high))


def sample_patch(
    image: torch.Tensor,
    label: torch.Tensor,
    corner: tuple[int, int, int],
    patch_size: tuple[int, int, int],
    voxel_to_world: np.ndarray,
    draw: SpatialDraw,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The patch at ``corner``, rotated and scaled about its centre with
    content from the volume around it, then mirrored."""
    if draw.motion is None:
        window = (slice(None), *(slice(c, c + p) for c, p in zip(corner, patch_size)))
        image, label = image[window], label[window]
    else:
        image, label = resample_patch(image, label, corner, patch_size, source_offsets(draw.motion, voxel_to_world))
    axes = [axis + 1 for axis, flipped in enumerate(draw.flips) if flipped]
    return (image.flip(axes), label.flip(axes)) if axes else (image, label)


def source_offsets(motion: np.ndarray, voxel_to_world: np.ndarray) -> np.ndarray:
    """The 3×3 map from an output voxel's offset to its source voxel's offset, both from the patch centre.

    The content moves by ``motion`` in world millimetres, so sampling needs its
    inverse, expressed in the case's voxels (whose spacing may differ per axis).
    """
    to_world = np.asarray(voxel_to_world, dtype=np.float64)
    return np.linalg.inv(to_world) @ np.linalg.inv(motion) @ to_world


def resample_patch(
    image: torch.Tensor,
    label: torch.Tensor,
    corner: tuple[int, int, int],
    patch_size: tuple[int, int, int],
    offsets: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a patch centred where the crop at ``corner`` is, each output voxel from ``offsets`` times its offset.

    Only the region of the volume that the patch's sources span is cut (and
    padded where it leaves the volume), so the cost follows the patch, not the case.
    """
    half = (np.asarray(patch_size) - 1) / 2
    centre = np.asarray(corner) + half
    reach = np.abs(offsets) @ half
    low = np.floor(centre - reach).astype(int)
    size = np.ceil(centre + reach).astype(int) + 1 - low
    region_image = padded_region(image, low, size, image.amin(dim=(1, 2, 3)))
    region_label = padded_region(label.float(), low, size, torch.zeros(1))
    # grid_sample's normalised coordinates (align_corners=True): -1 and 1 at the region's outer voxel centres.
    scale = np.maximum(size - 1, 1) / 2
    linear = np.diag(1 / scale) @ offsets @ np.diag(half)
    translation = (centre - low) / scale - 1
    # grid_sample orders its coordinates (Z, Y, X) for a (C, X, Y, Z) tensor.
    theta = torch.tensor(np.concatenate([linear[::-1, ::-1], translation[::-1, None]], axis=1), dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, 1, *patch_size], align_corners=True)
    sampled_image = F.grid_sample(region_image[None], grid, mode='bilinear', padding_mode='border', align_corners=True)[
        0
    ]
    sampled_label = F.grid_sample(region_label[None], grid, mode='nearest', padding_mode='border', align_corners=True)[
        0
    ]
    return sampled_image, sampled_label.to(label.dtype)


def padded_region(volume: torch.Tensor, low: np.ndarray, size: np.ndarray, pad_values: torch.Tensor) -> torch.Tensor:
    """``volume[:, low:low + size]``, each channel padded with its
    ``pad_values`` entry where the region leaves the volume."""
    region = pad_values.to(volume.dtype).view(-1, 1, 1, 1).expand(volume.shape[0], *size.tolist()).clone()
    start = np.maximum(low, 0)
    stop = np.minimum(low + size, volume.shape[1:])
    if np.all(stop > start):
        target = (slice(None), *(slice(a - o, b - o) for a, b, o in zip(start, stop, low)))
        region[target] = volume[(slice(None), *(slice(a, b) for a, b in zip(start, stop)))]
    return region


def _intensity(image: torch.Tensor, parameters: dict[str, torch.Tensor]) -> torch.Tensor:
    """nnU-Net's intensity transforms on one ``(C, X, Y, Z)`` patch, in its order."""
    std = float(parameters['noise_std'])
    if std > 0:
        generator = torch.Generator(image.device).manual_seed(int(parameters['noise_seed']))
        image += torch.randn(image.shape, generator=generator, device=image.device) * std
    for channel, sigmas in enumerate(parameters['blur_sigma'].tolist()):
        if any(sigmas):
            image[channel] = _gaussian_blur(image[channel], sigmas)
    image *= parameters['brightness']
    if float(parameters['contrast']) != 1:
        image[:] = _contrast(image, parameters['contrast'])
    for channel, zooms in enumerate(parameters['low_resolution'].tolist()):
        if any(zoom != 1 for zoom in zooms):
            image[channel] = _low_resolution(image[channel], zooms)
    for channel, gamma in enumerate(parameters['inverted_gamma'].tolist()):
        if gamma != 1:
            image[channel] = -_gamma_retaining_statistics(-image[channel], gamma)
    for channel, gamma in enumerate(parameters['gamma'].tolist()):
        if gamma != 1:
            image[channel] = _gamma_retaining_statistics(image[channel], gamma)
    return image


def _gaussian_blur(channel: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Separable Gaussian blur of an ``(X, Y, Z)`` volume, ``sigmas`` in voxels per axis, edges replicated."""
    volume = channel[None, None]
    for axis, sigma in enumerate(sigmas):
        radius = max(1, math.ceil(3 * sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=volume.dtype, device=volume.device)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = kernel.numel()
        padding = [0, 0] * 3
        padding[2 * (2 - axis) : 2 * (2 - axis) + 2] = [radius, radius]  # F.pad lists the last axis first
        volume = F.conv3d(F.pad(volume, padding, mode='replicate'), (kernel / kernel.sum()).view(shape))
    return volume[0, 0]


def _contrast(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each channel's deviations from its mean scaled by ``factor``, clipped to the range it had."""
    dims = (1, 2, 3)
    mean = image.mean(dim=dims, keepdim=True)
    low, high = image.amin(dim=dims, keepdim=True), image.amax(dim=dims, keepdim=True)
    return torch.maximum(torch.minimum((image - mean) * factor + mean, high), low)


def _low_resolution(channel: torch.Tensor, zooms: list[float]) -> torch.Tensor:
    """An ``(X, Y, Z)`` volume downsampled by ``zooms`` per axis (nearest) and brought back to its shape (trilinear)."""
    shape = channel.shape
    smaller = [max(1, round(n * zoom)) for n, zoom in zip(shape, zooms)]
    coarse = F.interpolate(channel[None, None], size=smaller, mode='nearest-exact')
    return F.interpolate(coarse, size=shape, mode='trilinear', align_corners=False)[0, 0]


def _gamma_retaining_statistics(channel: torch.Tensor, gamma: float) -> torch.Tensor:
    """``γ`` on the channel rescaled to [0, 1], then its original mean and standard deviation restored."""
    mean, std = channel.mean(), channel.std()
    low, spread = channel.min(), channel.max() - channel.min()
    powered = ((channel - low) / (spread + 1e-7)) ** gamma * (spread + 1e-7) + low
    return (powered - powered.mean()) / (powered.std() + 1e-8) * std + mean
