"""Layers of the fast recipe (airbench): activations by name, dirac init, a constant scale, and the
patch-whitening stem."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
}


def check_activation(name: str, what: str = "activation") -> str:
    """`name` if it is a key of ACTIVATIONS; `what` names the setting in the error."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown {what} '{name}'; valid: {', '.join(ACTIVATIONS)}")
    return name


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS[check_activation(name)]()


@torch.no_grad()
def dirac_(conv: nn.Conv2d) -> nn.Conv2d:
    """Partial identity: the first min(out, in) filters pass their input channel through unchanged
    (the kernel's centre 1, the rest 0); the other filters keep their random init (airbench)."""
    w = conv.weight
    nn.init.dirac_(w[:w.shape[1]])
    return conv


class Scale(nn.Module):
    """Multiplies by a constant (airbench's logits * 1/9)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


class Whiten(nn.Module):
    """A frozen k x k conv (no padding) whitening the image's patches, then a trained per-channel bias.

    init_from_data(images): the filters are the eigenvectors of the patches' (uncentred) covariance
    divided by sqrt(eigenvalue + eps), both +W and -W, so 2 * c * k * k channels come out (24 for RGB
    and k 2). The weight is a buffer: never trained nor pruned. The bias is added after the conv as
    its own parameter, so its gradient is a sum over the batch and never goes through a conv's
    weight-gradient kernel (oneDNN's bf16 one took ~8 s a step for this shape).
    """

    def __init__(self, in_channels: int = 3, kernel_size: int = 2, eps: float = 5e-4):
        super().__init__()
        self.in_channels, self.kernel_size, self.eps = in_channels, kernel_size, eps
        d = in_channels * kernel_size ** 2
        self.register_buffer("weight", torch.zeros(2 * d, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(2 * d))

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight.to(x.dtype))
        return y + self.bias.to(y.dtype).view(1, -1, 1, 1)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """(n * positions, c * k * k): every k x k patch of `images` (stride 1), flattened as the conv reads it."""
        k = self.kernel_size
        return F.unfold(images.float(), k).transpose(1, 2).reshape(-1, self.in_channels * k * k)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the filters from normalised training images (N, C, H, W)."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ConfigError(f"a whitening stem takes {self.in_channels}-channel images (N, {self.in_channels}, H, W), "
                              f"got shape {tuple(images.shape)}")
        if min(images.shape[2:]) < self.kernel_size:
            raise ConfigError(f"a whitening stem's {self.kernel_size}x{self.kernel_size} patches need images of at "
                              f"least that side, got {tuple(images.shape[2:])}")
        d = self.in_channels * self.kernel_size ** 2
        cov, count = torch.zeros(d, d, dtype=torch.float64, device=images.device), 0
        for chunk in images.split(500):  # 500 CIFAR images' patches: 1.9 MB per channel x position
            p = self.patches(chunk).double()
            cov += p.T @ p
            count += len(p)
        cov = (cov / count).cpu()
        values, vectors = torch.linalg.eigh(cov)  # ascending; airbench takes them largest first
        values, vectors = values.flip(0), vectors.T.flip(0)
        w = (vectors / torch.sqrt(values.clamp_min(0) + self.eps)[:, None]).reshape(-1, *self.weight.shape[1:])
        self.weight.copy_(torch.cat([w, -w]).to(self.weight))
