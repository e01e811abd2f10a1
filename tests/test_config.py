import math

import pytest

from prunegreedy import config
from prunegreedy.errors import ConfigError


def test_recipes_load_and_paper_recipe_is_unchanged():
    names = sorted(p.stem for p in config.RECIPE_DIR.glob("*.yaml"))
    for name in names:
        config.load(name)
    cfg = config.load("cifar10-k2")
    assert cfg.train.epochs == 50.0 and cfg.train.lr == 0.1 and cfg.train.batch_size == 128
    assert cfg.train.weight_decay == 5e-4 and cfg.train.momentum == 0.9
    assert cfg.train.milestones == [0.3, 0.6, 0.9] and cfg.train.gamma == 0.2
    assert config.load("cifar10-k1").model.plan == "cifar10-k1"


def test_unknown_key_names_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'; valid keys: trainer, epochs"):
        config.from_dict({"train": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        config.from_dict({"trian": {}})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer, got 'big'"):
        config.from_dict({"train": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"train\.nesterov: expected true or false"):
        config.from_dict({"train": {"nesterov": 3}})


def test_set_overrides_are_typed():
    over = config.parse_set(["train.lr=0.05", "train.epochs=3,2,2,2", "model.widths=8,8,16,16",
                             "data.data_dir=null", "train.nesterov=true", "train.amp=off",
                             "train.channels_last=off"])
    cfg = config.load("quick", over)
    assert cfg.train.lr == 0.05
    assert cfg.train.epochs == [3.0, 2.0, 2.0, 2.0]
    assert cfg.model.widths == [8, 8, 16, 16]
    assert cfg.data.data_dir is None and cfg.train.nesterov is True
    assert cfg.train.amp == "off" and cfg.train.channels_last is False  # YAML's `off` is a string here
    assert config.load("quick", config.parse_set(["train.epochs=1.5"])).train.epochs == 1.5
    with pytest.raises(ConfigError, match="--set expects key.sub=value"):
        config.parse_set(["train.lr"])


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, math.nan])
def test_invalid_prune_ratio(ratio):
    with pytest.raises(ConfigError, match=r"prune ratio must be in \[0, 1\)"):
        config.from_dict({"compress": {"ratio": ratio}})


def test_invalid_yaml_and_unknown_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        config.load(str(bad))
    with pytest.raises(ConfigError, match="recipes: cifar10-cpu, cifar10-cpu-aux, cifar10-cpu-compress"):
        config.load("nonesuch")
