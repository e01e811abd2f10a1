"""Progressive linear separability (a research question of the paper): how well a linear
classifier reads the class from each block's features.

Block j's features are blocks 1..j applied to un-augmented, normalised images, average-pooled to
2x2 (the heads' pooling, so the probe sees what a k=1 head would, without training the block for
it) and flattened: 4 * channels numbers. They are standardised with the training features' mean
and std, and a multinomial logistic regression is fit full-batch by L-BFGS from zero weights:
deterministic, with no seed and no learning rate to tune.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import Dataset, Normalize
from ..train.evaluate import accuracy
from ..train.modes import eval_mode

POOL = 2


@torch.no_grad()
def block_features(blocks: nn.ModuleList, x: torch.Tensor, norm: Normalize, batch_size: int = 500) -> list[torch.Tensor]:
    """(N, 4 * C_j) pooled features of every block j for the uint8 images x, in one pass."""
    out: list[list[torch.Tensor]] = [[] for _ in blocks]
    with eval_mode(blocks):
        for start in range(0, len(x), batch_size):
            h = norm(x[start:start + batch_size])
            for feats, block in zip(out, blocks):
                h = block(h)
                feats.append(torch.flatten(F.adaptive_avg_pool2d(h, POOL), 1).float().cpu())
    return [torch.cat(f) for f in out]


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
              num_classes: int, weight_decay: float = 1e-3, max_iter: int = 500) -> tuple[float, float]:
    """Train and test accuracy (%) of an L2-regularised softmax regression on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)  # dead channels stay 0, not NaN
    a, b = (train_x - mean) / std, (test_x - mean) / std
    linear = nn.Linear(a.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(a), train_y) + 0.5 * weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return accuracy(linear(a), train_y), accuracy(linear(b), test_y)


def separability(blocks: nn.ModuleList, ds: Dataset, norm: Normalize, weight_decay: float = 1e-3) -> list[dict]:
    """One row per block: feature dim, probe train and test accuracy (%)."""
    train_f = block_features(blocks, ds.train_x, norm)
    test_f = block_features(blocks, ds.test_x, norm)
    rows = []
    for j, (a, b) in enumerate(zip(train_f, test_f), 1):
        train_acc, test_acc = fit_probe(a, ds.train_y, b, ds.test_y, ds.num_classes, weight_decay)
        rows.append({"block": j, "dim": a.shape[1], "train_acc": train_acc, "test_acc": test_acc})
    return rows
