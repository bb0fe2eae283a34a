"""Patch sampling: TorchIO's label-balanced distribution, distinct cases per batch, rank shards, and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from ddp_worker import blob_subjects

from heartseg.outputs import Outputs
from heartseg.training.sampling import EpochSampler, PatchCorners, PatchDataset, pad_to_patch, patch_seed, rank_indices


@pytest.mark.parametrize('cases,batch_size', [(5, 4), (3, 3), (7, 2)])
def test_cases_in_one_batch_are_distinct(cases, batch_size):
    dataset = PatchDataset(
        blob_subjects(cases), (16, 16, 16), samples_per_epoch=batch_size * 12, seed=1, batch_size=batch_size
    )
    for epoch in range(4):
        order = dataset.case_order(epoch)
        batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        assert all(len(set(batch)) == batch_size for batch in batches), batches
        assert sorted(set(order)) == list(range(cases))


def test_rank_shards_cover_each_global_batch_once():
    shards = [rank_indices(24, batch_size=6, rank=rank, world_size=3) for rank in range(3)]
    assert sorted(index for shard in shards for index in shard) == list(range(24))
    for step in range(4):  # step s of every rank together is global batch s
        assert sorted(shard[2 * step + k] for shard in shards for k in range(2)) == list(range(6 * step, 6 * step + 6))


def test_patches_depend_only_on_seed_epoch_and_index():
    first = PatchDataset(blob_subjects(), (16, 16, 16), samples_per_epoch=6, seed=4)
    second = PatchDataset(blob_subjects(), (16, 16, 16), samples_per_epoch=6, seed=4)
    sampler = EpochSampler(6, batch_size=2, rank=0, world_size=1)
    sampler.set_epoch(2)
    position = list(sampler)[5]
    torch.manual_seed(123)  # the global generator must not matter
    image, target, _ = first[position]
    assert torch.equal(image, second[position][0]) and torch.equal(target, second[position][1])
    assert not torch.equal(image, second[position + 6][0]), 'the next epoch must give another patch'


def _label_subject(label: torch.Tensor) -> tio.Subject:
    return tio.Subject(image=tio.ScalarImage(tensor=label.float()), label=tio.LabelMap(tensor=label))


def _three_label_map() -> torch.Tensor:
    """Background, a common label 1 (above the listing share) and a rare label 2,
    one voxel of it too near the border to centre a patch."""
    label = torch.zeros(1, 12, 10, 9, dtype=torch.uint8)
    label[0, 2:10, 2:9, 1:8] = 1
    label[0, 5, 5, 4] = label[0, 6, 4, 3] = label[0, 0, 0, 0] = 2
    return label


def test_patch_centres_follow_torchio_label_sampler_distribution():
    label, patch, probabilities = _three_label_map(), (4, 3, 5), {0: 0.2, 1: 0.3, 2: 0.5}
    reference = tio.LabelSampler(patch, 'label', probabilities)
    subject = _label_subject(label)
    expected = reference.process_probability_map(reference.get_probability_map(subject), subject)
    corners = PatchCorners(label, patch, probabilities)
    assert 1 not in corners.listed and 2 in corners.listed, (
        'the common label is drawn by rejection, the rare one from its list'
    )
    rng, draws = np.random.default_rng(0), 40_000
    drawn = np.zeros(label.shape[1:])
    for _ in range(draws):
        drawn[tuple(c + p // 2 for c, p in zip(corners.draw(rng), patch))] += 1
    assert np.all(expected[drawn > 0] > 0), 'a patch was centred where TorchIO never centres one'
    assert np.abs(drawn / draws - expected).max() < 0.01
    for value, share in probabilities.items():
        assert abs(drawn[label[0].numpy() == value].sum() / draws - share) < 0.01, f'label {value}'


def test_labels_absent_from_valid_centres_are_never_drawn():
    label = torch.zeros(1, 16, 16, 16, dtype=torch.uint8)
    label[0, 0, 0, 0] = 1  # no 8-voxel patch can be centred here
    corners = PatchCorners(label, (8, 8, 8), {0: 0.5, 1: 0.5})
    rng = np.random.default_rng(1)
    assert corners.values == [0]
    assert all(0 <= c <= 8 for _ in range(200) for c in corners.draw(rng))


def test_a_foreground_only_patch_stream_is_centred_on_foreground_in_its_affine():
    label = _three_label_map()
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = (10, -20, 5)
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.rand(1, 12, 10, 9), affine=affine),
        label=tio.LabelMap(tensor=label, affine=affine),
    )
    dataset = PatchDataset([subject], (4, 4, 4), samples_per_epoch=30, seed=0, foreground_probability=1.0)
    for index in range(30):
        image, target, _ = dataset[index]
        assert target[0, 2, 2, 2] == 1, 'the centre voxel of a foreground-only patch must be foreground'
        corner = dataset.corners[0].draw(np.random.default_rng(patch_seed(0, 0, index)))
        window = (slice(None), *(slice(c, c + 4) for c in corner))
        assert torch.equal(image, subject['image'].data[window]), (
            'without augmentation a patch is the exact crop at its corner'
        )
        assert torch.equal(target[0], (label[window][0] == 1).float())


@pytest.mark.parametrize(
    'outputs',
    [
        Outputs('sigmoid', ((1,),)),
        Outputs('softmax', ((1,), (2,))),
        Outputs('sigmoid', ((1, 2), (2,)), paint_values=(1, 2)),
    ],
    ids=['one', 'two', 'regions'],
)
def test_foreground_patches_are_centred_on_the_outputs_foreground_labels_each_as_often(outputs):
    label = _three_label_map()
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.rand(label.shape)), label=tio.LabelMap(tensor=label))
    dataset = PatchDataset(
        [subject], (4, 4, 4), samples_per_epoch=1, seed=0, foreground_probability=0.6, outputs=outputs
    )
    corners = dataset.corners[0]
    foreground = outputs.foreground_labels
    assert corners.values == [0, *foreground]
    assert corners.weights.tolist() == pytest.approx([0.4, *[0.6 / len(foreground)] * len(foreground)])


def test_padding_to_the_patch_fills_labels_with_background_and_images_with_their_value():
    label = torch.ones(1, 3, 5, 2, dtype=torch.uint8)
    padded = pad_to_patch(label, (4, 4, 4), torch.zeros(1))
    assert padded.shape == (1, 4, 5, 4) and padded.dtype == torch.uint8
    assert torch.equal(padded[:, :3, :, :2], label) and int(padded.sum()) == label.numel(), (
        'padding must be background, not 1'
    )
    image = torch.stack([torch.full((3, 5, 2), 2.0), torch.full((3, 5, 2), -1.0)])
    padded = pad_to_patch(image, (4, 4, 4), torch.tensor([-3.0, -4.0]))
    assert torch.equal(padded[0, 3], torch.full((5, 4), -3.0)) and torch.equal(
        padded[1, :, :, 3], torch.full((4, 5), -4.0)
    )
