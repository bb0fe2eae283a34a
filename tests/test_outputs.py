"""heartseg.outputs: the one owner of sigmoid versus softmax turns labels into
targets and probabilities into label maps."""

from __future__ import annotations

import math

import pytest
import torch

from heartseg.outputs import Outputs, foreground_values, planned_kind, planned_outputs

SOFTMAX = Outputs('softmax', ((1,), (2,), (3,)))
# BraTS-like regions: whole tumour {1, 2, 3}, tumour core {2, 3}, enhancing {3}, painted in that order.
REGIONS = Outputs('sigmoid', ((1, 2, 3), (2, 3), (3,)), paint_values=(1, 2, 3))


def test_sigmoid_labels_take_the_most_likely_structure_above_one_half():
    probabilities = torch.tensor([[0.9, 0.4, 0.6, 0.2], [0.7, 0.45, 0.8, 0.5]]).view(2, 4, 1, 1)
    labels = Outputs('sigmoid', ((1,), (3,))).label_map(probabilities)
    assert labels.flatten().tolist() == [1, 0, 3, 0]


def test_softmax_labels_are_the_arg_max_with_background_a_class_of_its_own():
    # Per voxel: background wins; structure 2 wins; structure 3 wins with only 0.4 (no 0.5 threshold in a softmax).
    probabilities = torch.tensor([[0.7, 0.1, 0.3], [0.1, 0.1, 0.2], [0.1, 0.8, 0.1], [0.1, 0.0, 0.4]]).view(4, 3, 1, 1)
    assert SOFTMAX.label_map(probabilities).flatten().tolist() == [0, 2, 3]


def test_softmax_targets_are_one_hot_with_background_and_round_trip():
    label = torch.tensor([0, 1, 2, 3, 3, 0], dtype=torch.uint8).view(1, 6, 1, 1)
    target = SOFTMAX.target(label)
    assert target.shape == (4, 6, 1, 1)
    assert torch.equal(target.sum(0), torch.ones(6, 1, 1))
    assert torch.equal(SOFTMAX.label_map(SOFTMAX.probabilities(target * 20)), label[0])
    assert torch.equal(SOFTMAX.logit_masks(target * 20), SOFTMAX.structure_masks(label[0]))


def test_region_targets_overlap_and_predictions_paint_inner_regions_over_outer():
    label = torch.tensor([0, 1, 2, 3], dtype=torch.uint8).view(1, 4, 1, 1)
    target = REGIONS.target(label)
    assert target[:, :, 0, 0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
    assert torch.equal(REGIONS.label_map(target), label[0])


def test_softmax_heads_start_each_structure_near_the_prior():
    bias = SOFTMAX.initial_bias(0.01)
    probabilities = bias.softmax(0)
    assert bias[0] == 0 and probabilities[1:].tolist() == pytest.approx([0.01 / 1.03] * 3, rel=0.05)
    assert Outputs('sigmoid', ((1,),)).initial_bias(0.01).tolist() == pytest.approx([math.log(0.01 / 0.99)])


def test_the_default_is_softmax_only_for_several_exclusive_structures():
    assert planned_kind([[1]]) == 'sigmoid'
    assert planned_kind([[1], [2], [3]]) == 'softmax'
    assert planned_kind([[1, 2, 3], [2, 3], [3]]) == 'sigmoid'


def test_softmax_refuses_overlapping_regions():
    with pytest.raises(AssertionError, match='mutually exclusive'):
        Outputs('softmax', ((1, 2), (2,)), paint_values=(1, 2))


def test_the_planned_kind_gives_one_channel_per_structure_and_softmax_one_for_background():
    outputs = planned_outputs('sigmoid', {'0': 'background', '1': 'a', '2': 'b'}, regions=[])
    assert outputs == Outputs('sigmoid', ((1,), (2,)), names=('a', 'b')) and outputs.channels == 2
    assert planned_outputs('softmax', {'0': 'background', '1': 'a', '2': 'b'}, regions=[]).channels == 3


def test_foreground_values_leave_out_background_whether_labels_are_keyed_by_int_or_str():
    labels = {'0': 'background', '3': 'c', '1': 'a'}
    by_int = {int(value): name for value, name in labels.items()}
    assert foreground_values(labels) == foreground_values(by_int) == [1, 3]
    assert planned_outputs('sigmoid', labels, regions=[]).foreground_labels == (1, 3)
