"""Patch sampling: distinct cases per batch, rank shards, and determinism."""

from __future__ import annotations

import pytest
import torch
from ddp_worker import blob_subjects

from heartseg.sampling import EpochSampler, PatchDataset, rank_indices


@pytest.mark.parametrize('cases,batch_size', [(5, 4), (3, 3), (7, 2)])
def test_cases_in_one_batch_are_distinct(cases, batch_size):
    dataset = PatchDataset(blob_subjects(cases), (16, 16, 16), samples_per_epoch=batch_size * 12, seed=1, batch_size=batch_size)
    for epoch in range(4):
        order = dataset.case_order(epoch)
        batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
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
    image, target = first[position]
    assert torch.equal(image, second[position][0]) and torch.equal(target, second[position][1])
    assert not torch.equal(image, second[position + 6][0]), 'the next epoch must give another patch'
