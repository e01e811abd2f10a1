import torch
from helpers import tiny_net

from prunegreedy.data import base as data_base
from prunegreedy.measure import probe


def test_probe_separates_linearly_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = 10 * torch.eye(3, 8)  # three classes, far apart along their own axis

    def draw(n):
        y = torch.arange(n) % 3
        return centers[y] + torch.randn(n, 8, generator=g), y

    (a, ya), (b, yb) = draw(300), draw(150)
    assert probe.fit_probe(a, ya, b, yb, 3) == (100.0, 100.0)


def test_feature_dims_are_four_per_channel_and_probe_rows_per_block():
    net = tiny_net(widths=(4, 4, 8, 8))
    x = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(20) % 10
    ds = data_base.Dataset("synthetic", x, y, x[:10], y[:10], [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)
    norm = data_base.Normalize(ds.mean, ds.std, torch.device("cpu"), channels_last=True)
    feats = probe.block_features(net.blocks, x, norm, batch_size=7)  # batches of 7, 7, 6 concatenate
    assert [tuple(f.shape) for f in feats] == [(20, 16), (20, 16), (20, 32), (20, 32)]
    whole = torch.nn.functional.adaptive_avg_pool2d(net.eval().features(norm(x)), 2)
    torch.testing.assert_close(feats[-1], torch.flatten(whole, 1))  # batch size may change float rounding
    rows = probe.separability(net.blocks, ds, norm)
    assert [(r["block"], r["dim"]) for r in rows] == [(1, 16), (2, 16), (3, 32), (4, 32)]
