"""The defaults a plan starts from: those that depend on the device, one table; the training length's.

Every default has one owner: these here, and every other setting's in its
:class:`~heartseg.planning.config.RunConfig` field.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceDefaults:
    """The settings whose best value depends on the device."""

    base_channels: int
    channels_last: bool
    num_workers: int
    patch_voxels: int  # what one training step can afford
    min_spacing_mm: float  # the finest target spacing the device trains at in useful time


# base_channels: on a 2-core CPU, 8 channels train about twice as many steps as 16 in the same time.
# channels_last: channels_last_3d made the CPU training step 1.5x faster, the H100's 1.14x slower.
# num_workers: on a 2-core CPU the main process keeps up (the pipeline makes 16x the patches the
#   model uses); a GPU needs background workers so that it never waits for patches. Each torchrun
#   process gets at most its share of the cores, less one for itself.
# min_spacing_mm: 0.625 mm scans have 8x the voxels of 1.25 mm ones, which a CPU cannot train on in useful time.
DEVICE_DEFAULTS = {
    'cpu': DeviceDefaults(
        base_channels=8, channels_last=True, num_workers=0, patch_voxels=64 * 64 * 48, min_spacing_mm=1.25
    ),
    'mps': DeviceDefaults(
        base_channels=16, channels_last=False, num_workers=2, patch_voxels=96 * 96 * 64, min_spacing_mm=1.0
    ),
    'cuda': DeviceDefaults(
        base_channels=16, channels_last=False, num_workers=8, patch_voxels=128 * 128 * 96, min_spacing_mm=0.0
    ),
}
# The default length, in optimiser steps, as in nnU-Net: an epoch is one patch per training case, so a
# fixed epoch count trains a 16-case dataset a quarter as long as a 64-case one. On the LA2018 learning
# curve at the CPU plan (BENCHMARKS.md, "Training length") the test Dice gained 0.0017 from 7,680 to
# 10,000 steps, inside the noise of a new patch stream. The GPU plan's patch covers the same field of
# view at twice the resolution, so it gets the same steps.
DEFAULT_TRAINING_STEPS = 10_000
# A run of the default length validates about this many times (every epoch would dominate a small
# dataset's run, whose epochs are a few steps each); the last epoch always validates.
DEFAULT_LENGTH_VALIDATIONS = 20
# With a time limit the epoch count is fitted to the clock (validating about a tenth of the time: val_every 0);
# this only caps it.
TIME_LIMITED_MAX_EPOCHS = 10_000
# A short schedule that reaches a useful Dice on the built-in synthetic data within minutes on a laptop CPU.
SYNTHETIC_SCHEDULE = {'epochs': 10, 'steps_per_epoch': 20}
DEFAULT_CACHE = 'cache'
# per-axis: nnU-Net's plan; isotropic: 2x2x2 at every level.
POOLINGS = ('per-axis', 'isotropic')
