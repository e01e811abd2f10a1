"""`prunegreedy run --model MODULE:FACTORY`: your own module from the command line, resumed and reloaded by name."""
import json

import torch
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app

MODULE = '''
import torch
from torch import nn


class Mine(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.b(self.a(x)), 1), 1))


def make():
    torch.manual_seed(0)
    return Mine()
'''
TINY = ["--dataset", "cifar10-sample", "--epochs", "0.2", "--prune-ratio", "0.5", "--set", "data.train_limit=200",
        "--set", "data.test_limit=100", "--set", "run.threads=1", "--quiet"]


def test_the_cli_trains_resumes_and_loads_your_module_by_module_and_factory(tmp_path, monkeypatch, cache_dir):
    (tmp_path / "mynets_cli.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)  # imported from the working directory
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--model", "mynets_cli:make", "--out", str(tmp_path / "r"), *TINY])
    assert res.exit_code == 0, res.output
    assert "split of mynets_cli:make: a,b (none registered or given" in res.output
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["status"] == "finished" and meta["plan"] == "mynets_cli:make"
    meta.update(status="interrupted", stages_done=1)
    (tmp_path / "r" / "run.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["run", "--resume", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "finished"
    net = prunegreedy.load_network(tmp_path / "r")
    assert type(net).__name__ == "Mine"
    assert [net.a[0].out_channels, net.b[0].out_channels, net.b[3].out_channels] == [4, 8, 16]
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    res = runner.invoke(app, ["run", "--model", "mynets_cli:nope", "--out", str(tmp_path / "bad"), *TINY])
    assert res.exit_code == 2 and not (tmp_path / "bad").exists()
    assert res.stderr.strip() == ("error: --model mynets_cli:nope: cannot import it (module 'mynets_cli' has no "
                                  "attribute 'nope')")
