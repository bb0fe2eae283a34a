"""The recipe: the network's initial head biases; the patch loader, its workers single-threaded in every library."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import SimpleITK as sitk
import torch
from ddp_worker import blob_subjects

from heartseg.planning.config import RunConfig
from heartseg.training.augmentation import Augmentation
from heartseg.training.recipe import build_network, build_patch_loader


class ThreadCounts(Augmentation):
    """Writes the thread counts its process sees into the patch, so that the batch carries them back."""

    def __init__(self):
        super().__init__('default')

    def intensity(self, image: torch.Tensor, parameters: dict[str, torch.Tensor]) -> torch.Tensor:
        counts = torch.tensor(
            [torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()], dtype=torch.float32
        )
        return counts.repeat(image.numel() // 2 + 1)[: image.numel()].reshape(image.shape)


def recipe_config(**settings) -> RunConfig:
    """A one-epoch config of four base channels on 16³ patches, with no data behind it: enough to build the recipe."""
    return RunConfig(
        data='d',
        run_dir='r',
        cache_dir='c',
        target_spacing=(1.0,) * 3,
        patch_size=(16, 16, 16),
        epochs=1,
        val_every=1,
        base_channels=4,
        channels_last=False,
        modalities={'0': 'MRI'},
        **settings,
    )


def test_loader_workers_run_one_thread_per_library():
    config = recipe_config(
        levels=2,
        output='sigmoid',
        batch_size=2,
        steps_per_epoch=1,
        num_workers=1,
        labels={'0': 'background', '1': 'blob'},
    )
    images, *_ = next(iter(build_patch_loader(config, blob_subjects(2), ThreadCounts(), torch.device('cpu')).loader))
    assert images.flatten()[:2].tolist() == [1.0, 1.0], 'torch and ITK threads in a worker'
    defaults = build_patch_loader(
        replace(config, num_workers=1), blob_subjects(2), ThreadCounts(), torch.device('cpu'), worker_threads=None
    )
    images, *_ = next(iter(defaults.loader))
    assert images.flatten()[1].item() == sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), (
        "without a limit, ITK's default"
    )


LOG_ODDS_OF_ONE_PERCENT = math.log(0.01 / 0.99)


@pytest.mark.parametrize(
    'output, labels, expected',
    [
        ('sigmoid', {'0': 'background', '1': 'blob'}, [LOG_ODDS_OF_ONE_PERCENT]),
        # The background logit at 0 against each structure's log-odds: every structure starts near 1%.
        ('softmax', {'0': 'background', '1': 'a', '2': 'b'}, [0.0, LOG_ODDS_OF_ONE_PERCENT, LOG_ODDS_OF_ONE_PERCENT]),
    ],
)
def test_every_head_starts_each_structure_at_a_one_percent_prior(output, labels, expected):
    config = recipe_config(num_workers=0, levels=3, deep_supervision=True, output=output, labels=labels)
    network = build_network(config, torch.device('cpu'))
    heads = [network.head, *network.deep_heads]
    assert len(heads) == 2, 'a 3-level network has one deep-supervision head'
    for head in heads:
        assert head.bias.tolist() == pytest.approx(expected, abs=1e-6)
