"""Small real networks and datasets shared by the tests."""
import torch
from torch import nn

from prunegreedy.data import base as data_base
from prunegreedy.measure.size import output_shape
from prunegreedy.nn import net as models_net
from prunegreedy.nn import plans as models_plans
from prunegreedy.config import TrainConfig


def tiny_net(widths=(8, 8, 16, 16), plan="cifar10-k2", seed=0, head=None) -> models_net.GreedyNet:
    torch.manual_seed(seed)
    blocks, heads, shape = [], [], (3, 32, 32)
    for s in models_plans.make_plan(plan, widths=list(widths), head=head):
        blocks.append(models_net.make_block(shape[0], s))
        shape = output_shape(blocks[-1], shape)
        heads.append(models_net.make_head(s.width, s, 10, shape[1:]))
    return models_net.GreedyNet(blocks, heads)


def cpu_norm(ds) -> data_base.Normalize:
    return data_base.Normalize(ds.mean, ds.std, torch.device("cpu"), channels_last=True)


def quick_train_cfg(**kw) -> TrainConfig:
    return TrainConfig(batch_size=64, lr=0.05, schedule="linear", amp="off", **kw)


def snapshot(module: nn.Module) -> dict:
    """Every parameter and buffer (BN running stats included), cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
