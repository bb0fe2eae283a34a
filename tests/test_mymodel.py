import pytest
import torch

from mymodel import UNet3D


def test_seed_shape_table():
    """--levels 2 --base-channels 8 reproduces the seed report's shapes exactly."""
    net = UNet3D(levels=2, base_channels=8, norm='batch')
    stages = net.features(torch.zeros(1, 1, 128, 128, 32))
    assert [list(s.shape) for s in stages] == [
        [1, 8, 128, 128, 32],   # encoder 1
        [1, 16, 64, 64, 16],    # encoder 2
        [1, 32, 32, 32, 8],     # bridge
        [1, 16, 64, 64, 16],    # decoder 2
        [1, 8, 128, 128, 32],   # decoder 1
    ]
    assert net(torch.zeros(1, 1, 128, 128, 32)).shape == (1, 1, 128, 128, 32)


@pytest.mark.parametrize('levels,base,norm', [(1, 4, 'batch'), (3, 8, 'instance'), (4, 4, 'instance')])
def test_deeper_variants_keep_input_size(levels, base, norm):
    net = UNet3D(in_channels=2, out_channels=3, levels=levels, base_channels=base, norm=norm)
    assert net(torch.zeros(2, 2, 32, 32, 16)).shape == (2, 3, 32, 32, 16)
    assert net.encoders[-1][0].out_channels == base * 2 ** (levels - 1)


def test_indivisible_input_is_rejected_with_a_message():
    with pytest.raises(AssertionError, match='divisible by 4'):
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
    assert isinstance(UNet3D(levels=2, deep_supervision=True).train()(batch), torch.Tensor), 'a 2-level net has no stage to supervise'
