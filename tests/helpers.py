"""Small real networks and datasets shared by the tests."""
import torch
from torch import nn

from prunegreedy.data import base as data_base
from prunegreedy.measure.size import output_shape
from prunegreedy.nn import network as models_net
from prunegreedy.nn import plans as models_plans
from prunegreedy.config import TrainConfig


class TinyNet(nn.Module):
    """A paper plan's blocks and every stage's head, untrained: blocks, heads, features(x)."""

    def __init__(self, blocks: list[nn.Module], heads: list[nn.Module]):
        super().__init__()
        self.blocks, self.heads = nn.ModuleList(blocks), nn.ModuleList(heads)

    def features(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[-1](self.features(x))


def tiny_net(widths=(8, 8, 16, 16), plan="cifar10-k2", seed=0, head=None) -> TinyNet:
    torch.manual_seed(seed)
    blocks, heads, shape = [], [], (3, 32, 32)
    for s in models_plans.make_plan(plan, widths=list(widths), head=head):
        blocks.append(models_net.make_block(shape[0], s))
        shape = output_shape(blocks[-1], shape)
        heads.append(models_net.make_head(s.width, s, 10, shape[1:]))
    return TinyNet(blocks, heads)


class LinesUI:
    """A UI that keeps every log line (no progress bars)."""

    def __init__(self):
        self.lines: list[str] = []

    def log(self, msg: str) -> None:
        self.lines.append(msg)

    def progress(self, desc: str):
        return None


def cpu_norm(ds) -> data_base.Normalize:
    return data_base.Normalize(ds.mean, ds.std, torch.device("cpu"), channels_last=True)


def quick_train_cfg(**kw) -> TrainConfig:
    return TrainConfig(batch_size=64, lr=0.05, schedule="linear", amp="off", **kw)


def snapshot(module: nn.Module) -> dict:
    """Every parameter and buffer (BN running stats included), cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def made_stages(widths=(8, 8, 16, 16), plan="cifar10-k2", seed=0, head=None, heads=True):
    """(network, blocks, heads) of a paper plan made as the decoupled and end-to-end trainers make
    them under seed: every block, each followed by its head (`heads` False: the last head alone,
    nn.Identity for the others)."""
    options = {"widths": list(widths), **({"head": head} if head else {})}
    net = models_net.build_network(plan, 10, 32, options)
    torch.manual_seed(seed)
    shape, out = (3, 32, 32), []
    for j in range(len(net.stages)):
        shape = output_shape(net.module(j, shape[0]), shape)
        out.append(net.head(j, shape) if heads or j == len(net.stages) - 1 else nn.Identity())
    return net, net.modules_of(), out
