"""Recipes: the paper's (Section V-A) and the small-data one ``recipe: auto`` picks for small training sets."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import bicsnet
from bicsnet.cli.main import main
from bicsnet.config import RunConfig
from bicsnet.errors import ConfigError
from bicsnet.tasks import SMALL_DATA_IMAGES, TASKS, choose_recipe, recipe_config


def test_auto_picks_small_below_the_threshold_and_paper_above() -> None:
    assert choose_recipe("detection", "auto", SMALL_DATA_IMAGES - 1).name == "small"
    assert choose_recipe("detection", "auto", SMALL_DATA_IMAGES).name == "paper"
    assert choose_recipe("detection", "paper", 10).name == "paper"
    assert choose_recipe("instance", "auto", 10) is TASKS["detection"].small_recipe  # instance = detection with masks
    assert choose_recipe("segmentation", "auto", 572).name == "small"
    assert choose_recipe("classification", "auto", 10).name == "paper"  # no small recipe: the paper's
    with pytest.raises(ConfigError, match="only the paper's recipe"):
        choose_recipe("classification", "small", 10)
    with pytest.raises(ConfigError, match="recipe 'tiny': choose one of auto, paper, small"):
        choose_recipe("detection", "tiny", 10)


def test_recipe_config_converts_the_paper_iterations_only() -> None:
    small = recipe_config("segmentation", 572, "small")
    assert (small["epochs"], small["lr"], small["lr_reference_batch"], small["schedule"]) == (50, 0.01, 8, "cosine")
    paper = recipe_config("segmentation", 572)  # the default choice is the paper's
    assert paper["epochs"] == -(-20000 * 256 // 572) and paper["lr_reference_batch"] == 256


def _detection_args(tmp: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", "bicsnet_48_tiny", "--img-size", "64", "--synth-dir", str(tmp / "data"),
        "--synth-train", "8", "--synth-val", "4", "--synth-size", "64", "--device", "cpu", "--print-config", *extra,
    ]  # fmt: skip


def test_small_training_set_gets_the_small_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(_detection_args(tmp_path)) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    r = TASKS["detection"].small_recipe
    assert cfg["recipe"] == "small"
    assert cfg["model"]["options"] == {"head_norm": "gn"} and cfg["model"]["bn_momentum"] == 0.1
    assert tuple(cfg["data"]["scale_range"]) == r.scale_range == (0.75, 1.5)
    t = cfg["train"]
    assert (t["schedule"], t["lr"], t["lr_reference_batch"], t["ema_decay"], t["grad_clip"], t["epochs"]) == (
        "cosine", 0.02, 8, 0.99, 10.0, 50
    )


def test_recipe_paper_keeps_the_papers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(_detection_args(tmp_path, "--recipe", "paper")) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["recipe"] == "paper" and cfg["model"]["options"] == {} and cfg["model"]["bn_momentum"] is None
    assert tuple(cfg["data"]["scale_range"]) == (0.5, 2.0)
    t = cfg["train"]
    assert (t["schedule"], t["lr"], t["lr_reference_batch"], t["epochs"], t["ema_decay"]) == ("step", 0.16, 128, 350, None)


def test_explicit_options_beat_the_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = _detection_args(tmp_path, "--scale-range", "0.5", "1.0", "--bn-momentum", "0.05", "--set", "head_norm=bn",
                           "--lr", "0.03", "--epochs", "3", "--set", "train.ema_decay=null")  # fmt: skip
    assert main(args) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["recipe"] == "small"
    assert cfg["model"]["options"] == {"head_norm": "bn"} and cfg["model"]["bn_momentum"] == 0.05
    assert tuple(cfg["data"]["scale_range"]) == (0.5, 1.0)
    t = cfg["train"]
    assert (t["lr"], t["lr_reference_batch"], t["epochs"], t["ema_decay"], t["schedule"]) == (0.03, None, 3, None, "cosine")


def test_resolved_config_repeats_the_recipe_and_says_it_first(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({
        "model": {"name": "bicsnet_48_tiny", "task": "detection", "img_size": 64},
        "data": {"synth_root": str(tmp_path / "data"), "synth_train": 8, "synth_val": 4, "synth_size": 64},
        "train": {"device": "cpu"},
    })  # fmt: skip
    resolved, data = bicsnet.api.resolve_run(cfg)
    assert resolved.recipe == "small" and len(data.train) == 8
    again, _ = bicsnet.api.resolve_run(RunConfig.from_dict(yaml.safe_load(resolved.to_yaml())))
    assert again == resolved  # config.yaml of a run reproduces it
    text = bicsnet.api.describe_recipe(resolved, 8, "auto")
    first, second = text.splitlines()
    assert first.startswith("recipe small: small-data") and "(8 training images; --recipe paper for the paper's)" in first
    assert "50 epochs" in second and "lr 0.02 (cosine) for batch 8" in second and "EMA 0.99" in second
    assert "BN momentum 0.1" in second and "head_norm gn" in second and "scale jitter 0.75-1.5" in second
    # The recipe's head norm reaches the model: GroupNorm in the RetinaNet subnets.
    model = bicsnet.create_model("bicsnet_48_tiny", "detection", 3, **resolved.model.options, img_size=64)
    assert any(type(m).__name__ == "GroupNorm" for m in model.head.modules())


def test_unknown_recipe_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(_detection_args(tmp_path, "--set", "recipe=fast")) == 2
    err = capsys.readouterr().err
    assert "recipe 'fast': choose one of auto, paper, small" in err and not (tmp_path / "data").exists()
    with pytest.raises(ConfigError, match="recipe is a top-level key"):
        RunConfig.from_dict({"train": {"recipe": "paper"}})
