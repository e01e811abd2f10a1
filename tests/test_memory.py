import torch
from torch import nn

from prunegreedy.nn import network as models_net
from prunegreedy.nn import plans as models_plans
from prunegreedy.train import modes as train_modes
from prunegreedy.measure.memory import saved_activation_bytes

F32 = 4  # bytes


def test_saved_bytes_of_a_tiny_net_match_a_hand_count():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Flatten(), nn.Linear(64, 5))
    x = torch.randn(2, 3, 4, 4)
    expected = (2 * 3 * 4 * 4 * F32  # conv saves its input x (and its weight: a parameter, left out)
                + 2 * 4 * 4 * 4 * F32  # BN (training) saves its input, the conv output (and weight, running stats)
                + 2 * 4 * F32  # BN saves the batch mean and inverse std, 4 channels each
                + 2 * 4 * 4 * 4 * F32)  # ReLU saves its output (in place: BN's output storage)
    # flatten saves nothing; linear saves its input (a view of the ReLU output: counted already)
    # and weight.t() (a view of a parameter); its bias is not saved.
    assert saved_activation_bytes(lambda: net(x), net.state_dict().values()) == (expected, 5)
    weights = (4 * 3 * 3 * 3 + 4 + 4 + 4 + 5 * 64) * F32  # conv, BN weight, running mean, running var, linear
    assert saved_activation_bytes(lambda: net(x)) == (expected + weights, 10)


def test_frozen_prefix_under_no_grad_adds_nothing():
    torch.manual_seed(0)
    plan = models_plans.make_plan("cifar10-k2", widths=[4, 4, 8, 8])
    prefix = train_modes.freeze(models_net.make_block(3, plan[0]))
    block = models_net.make_block(4, plan[1])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        feats = prefix(x)
    params = [*prefix.state_dict().values(), *block.state_dict().values()]

    def with_prefix():
        with torch.no_grad():
            f = prefix(x)
        return block(f)

    alone = saved_activation_bytes(lambda: block(feats), params)
    assert alone[0] > 0
    assert saved_activation_bytes(with_prefix, params) == alone
