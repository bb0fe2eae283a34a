import pytest
import torch

from mymodel import UNet3D, total_pooling


def test_seed_shape_table():
    """--levels 2 --base-channels 8 reproduces the seed report's shapes exactly."""
    net = UNet3D(levels=2, base_channels=8, norm='batch')
    stages = net.features(torch.zeros(1, 1, 128, 128, 32))
    assert [list(s.shape) for s in stages] == [
        [1, 8, 128, 128, 32],  # encoder 1
        [1, 16, 64, 64, 16],  # encoder 2
        [1, 32, 32, 32, 8],  # bridge
        [1, 16, 64, 64, 16],  # decoder 2
        [1, 8, 128, 128, 32],  # decoder 1
    ]
    assert net(torch.zeros(1, 1, 128, 128, 32)).shape == (1, 1, 128, 128, 32)


@pytest.mark.parametrize('levels,base,norm', [(1, 4, 'batch'), (3, 8, 'instance'), (4, 4, 'instance')])
def test_deeper_variants_keep_input_size(levels, base, norm):
    net = UNet3D(in_channels=2, out_channels=3, levels=levels, base_channels=base, norm=norm)
    assert net(torch.zeros(2, 2, 32, 32, 16)).shape == (2, 3, 32, 32, 16)
    assert net.encoders[-1][0].out_channels == base * 2 ** (levels - 1)


def test_indivisible_input_is_rejected_with_a_message():
    with pytest.raises(AssertionError, match=r'divisible by \(4, 4, 4\) per axis'):
        UNet3D(levels=2)(torch.zeros(1, 1, 30, 32, 32))


def test_instance_norm_is_per_sample_and_equals_instance_norm_3d():
    torch.manual_seed(0)
    volume = torch.randn(2, 8, 12, 10, 6).to(memory_format=torch.channels_last_3d)
    ours = UNet3D(levels=1, base_channels=8, norm='instance').encoders[0][1]
    reference = torch.nn.InstanceNorm3d(8, affine=True)
    assert torch.allclose(ours(volume), reference(volume), atol=1e-5)
    net = UNet3D(levels=2, base_channels=4, norm='instance').train()
    batch = torch.randn(2, 1, 16, 16, 8)
    assert torch.allclose(net(batch)[:1], net(batch[:1]), atol=1e-5), 'one patch must not change another'


def test_deep_supervision_returns_coarser_logits_only_in_training():
    net = UNet3D(levels=4, base_channels=4, norm='instance', deep_supervision=True)
    batch = torch.zeros(2, 1, 32, 32, 16)
    shapes = [tuple(logits.shape) for logits in net.train()(batch)]
    assert shapes == [(2, 1, 32, 32, 16), (2, 1, 16, 16, 8), (2, 1, 8, 8, 4)], shapes
    assert net.eval()(batch).shape == (2, 1, 32, 32, 16)
    assert isinstance(UNet3D(levels=2, deep_supervision=True).train()(batch), torch.Tensor), (
        'a 2-level net has no stage to supervise'
    )


# nnU-Net's plan for 1.5 x 1.5 x 10 mm at 3 levels: the slices are pooled only at the last level.
THICK = {'pool_sizes': [(2, 2, 1), (2, 2, 1), (2, 2, 2)], 'kernel_sizes': [(3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3)]}


def test_a_per_axis_network_pools_and_convolves_only_the_axes_its_plan_names():
    net = UNet3D(levels=3, base_channels=4, deep_supervision=True, **THICK)
    assert net.size_divisors == (8, 8, 2) == total_pooling(THICK['pool_sizes'])
    shapes = [tuple(s.shape[2:]) for s in net.features(torch.zeros(1, 1, 16, 16, 6))]
    assert shapes[:4] == [(16, 16, 6), (8, 8, 6), (4, 4, 6), (2, 2, 3)], (
        'the slices survive two levels, then halve once'
    )
    assert net.encoders[0][0].kernel_size == (3, 3, 1) and net.encoders[0][0].padding == (1, 1, 0)
    assert net.bridge[0].kernel_size == (3, 3, 3)
    assert net.upsamplers[0].stride == (2, 2, 2) and net.upsamplers[-1].stride == (2, 2, 1)
    outputs = net.train()(torch.zeros(1, 1, 16, 16, 6))
    assert [tuple(output.shape) for output in outputs] == [(1, 1, 16, 16, 6), (1, 1, 8, 8, 6)]
    with pytest.raises(AssertionError, match=r'divisible by \(8, 8, 2\) per axis'):
        net(torch.zeros(1, 1, 16, 16, 5))


def test_an_isotropic_plan_written_out_builds_the_seed_network_exactly():
    """The default network is unchanged by per-axis planning: same weights from the same seed, same output."""
    torch.manual_seed(3)
    default = UNet3D(levels=2, base_channels=8, norm='batch').eval()
    torch.manual_seed(3)
    explicit = UNet3D(
        levels=2, base_channels=8, norm='batch', pool_sizes=[(2, 2, 2)] * 2, kernel_sizes=[(3, 3, 3)] * 3
    ).eval()
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values()))
    batch = torch.randn(1, 1, 16, 16, 8)
    assert torch.equal(default(batch), explicit(batch))
    assert sum(p.numel() for p in default.parameters()) == 85_177  # as counted by the version before per-axis planning


def test_a_bad_per_axis_plan_is_refused_with_what_was_expected():
    with pytest.raises(AssertionError, match='pool_sizes must give 1 or 2 per axis for each of the 2 levels'):
        UNet3D(levels=2, pool_sizes=[(2, 2, 2)])
    with pytest.raises(AssertionError, match='kernel_sizes must give 1 or 3 per axis for each of the 3 stages'):
        UNet3D(levels=2, pool_sizes=[(2, 2, 2)] * 2, kernel_sizes=[(3, 3, 5)] * 3)
