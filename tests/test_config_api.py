"""Run configurations (YAML, --set, --print-config), the library API, and the task table as the one list of tasks."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import bicsnet
from bicsnet.cli.main import main
from bicsnet.config import RunConfig, load_run_config

PACKAGE = Path(bicsnet.__file__).parent


def _cli_args(tmp: Path, out: Path) -> list[str]:
    return [
        "train", "--task", "classification", "--model", "bicsnet_48_tiny", "--img-size", "64",
        "--synth-dir", str(tmp / "data"), "--synth-train", "12", "--synth-val", "6", "--synth-size", "64",
        "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--deterministic",
        "--set", "train.lr=0.05", "--set", "train.ckpt_every_steps=0", "--out", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cfg")
    assert main(_cli_args(tmp, tmp / "run")) == 0
    return tmp / "run"


def test_run_stores_resolved_config_and_reproduces(run: Path, tmp_path: Path) -> None:
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["model"] == {"name": "bicsnet_48_tiny", "task": "classification", "img_size": 64, "options": {},
                               "weights": None, "strict_weights": False, "backbone_weights": None,
                               "bn_momentum": None}  # fmt: skip
    # Resolved: the recipe's schedule and every TrainConfig field explicit, the --set value kept.
    assert stored["train"]["lr"] == 0.05 and stored["train"]["schedule"] == "cosine" and stored["train"]["epochs"] == 1
    assert stored["train"]["lr_reference_batch"] is None
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(tmp_path / "again")]) == 0
    a, b = load_file(run / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_library_api_evaluates_and_predicts_the_run(run: Path, tmp_path: Path) -> None:
    metrics = bicsnet.evaluate(run / "model.safetensors", out=tmp_path / "eval", workers=0, device="cpu")
    assert metrics == yaml.safe_load((run / "metrics.json").read_text())
    assert (tmp_path / "eval" / "metrics.json").exists()
    image = sorted((Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["synth_root"]) / "folder" / "val").rglob("*.png"))[0]
    (pred,) = bicsnet.predict(run, [image], out=tmp_path / "pred", device="cpu")
    assert pred.record["task"] == "classification" and len(pred.record["top5"]) == 5
    assert (tmp_path / "pred" / f"{image.stem}.json").exists()


def test_print_config_and_precedence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": {"name": "bicsnet_48_tiny", "task": "classification", "img_size": 48},
                                        "train": {"epochs": 9, "lr": 0.3}}))  # fmt: skip
    args = ["train", "--config", str(cfg_file), "--epochs", "2", "--set", "train.lr=0.07", "--set", "dropout=0.1",
            "--synth-dir", str(tmp_path / "d"), "--synth-train", "8", "--synth-val", "4", "--synth-size", "48",
            "--print-config"]  # fmt: skip
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 2  # a flag beats the file
    assert printed["train"]["lr"] == 0.07  # --set beats both
    assert printed["model"]["img_size"] == 48 and printed["model"]["options"] == {"dropout": 0.1}
    assert not any(tmp_path.glob("**/model.safetensors"))


@pytest.mark.parametrize(
    "sets,message",
    [
        (["train.lrr=0.1"], "unknown key train.lrr; did you mean train.lr?"),
        (["trian.lr=0.1"], "unknown key trian; did you mean train?"),
        (["data.synth_trian=5"], "did you mean data.synth_train?"),
        (["train.epochs=abc"], "epochs='abc'"),
        # a training or data key without its section is not taken for a model option
        (["keep_freed_memory=false"], "keep_freed_memory is a key of section train: write --set train.keep_freed_memory=false"),
        (["synth_train=5"], "write --set data.synth_train=5"),
    ],
)
def test_bad_keys_name_the_key_and_the_closest(sets: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--print-config", *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_unknown_key_in_a_config_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("model: {name: bicsnet_48, tsak: detection}\n")
    with pytest.raises(bicsnet.ConfigError, match=r"bad.yaml: unknown key model.tsak; did you mean model.task\?"):
        load_run_config(f)


def test_run_config_round_trips() -> None:
    cfg = RunConfig(model={"name": "bicsnet_48s", "task": "detection", "options": {"focal_gamma": 2.0}},
                    data={"train_ann": "a.json", "scale_range": [0.8, 1.2]}, train={"epochs": 3})  # fmt: skip
    again = RunConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg and again.data.scale_range == (0.8, 1.2)


def test_task_names_live_only_in_the_task_table() -> None:
    pattern = re.compile(r"""task\w*\s*(==|!=|in \(|not in \()|["'](detection|instance|segmentation|classification)["']\s*(==|!=)""")
    offenders = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in PACKAGE.rglob("*.py")
        if p.name != "tasks.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
    assert list(bicsnet.TASKS) == ["backbone", "detection", "instance", "segmentation", "classification"]


def test_predict_keeps_one_result_per_input_when_base_names_repeat(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    for cam, colour in (("cam1", (200, 20, 20)), ("cam2", (20, 200, 20))):
        (tmp_path / cam).mkdir()
        Image.new("RGB", (64, 48), colour).save(tmp_path / cam / "frame.jpg")
    Image.new("RGB", (64, 48), (0, 0, 200)).save(tmp_path / "cam2" / "frame.png")
    out = tmp_path / "preds"
    images = [str(tmp_path / "cam1" / "frame.jpg"), str(tmp_path / "cam2" / "frame.jpg")]
    assert main(["predict", "--checkpoint", str(run), *images, "--device", "cpu", "--out", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["cam1/frame.json", "cam2/frame.json", "predictions.csv"]  # a classifier: one CSV for the run
    assert [yaml.safe_load((out / c / "frame.json").read_text())["image"] for c in ("cam1", "cam2")] == images
    # Same folder, same stem: refused before anything is written, naming both inputs.
    clash = [*images, str(tmp_path / "cam2" / "frame.png")]
    assert main(["predict", "--checkpoint", str(run), *clash, "--device", "cpu", "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err
    assert "cam2/frame.jpg and" in err and "cam2/frame.png would both write cam2/frame.json" in err
    assert not (tmp_path / "p2").exists()
    # Existing results are kept unless --overwrite.
    before = (out / "cam1" / "frame.json").stat().st_mtime_ns
    assert main(["predict", "--checkpoint", str(run), *images, "--device", "cpu", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "cam1" / "frame.json").stat().st_mtime_ns == before
    assert main(["predict", "--checkpoint", str(run), *images, "--device", "cpu", "--out", str(out), "--overwrite"]) == 0


def test_no_model_option_shares_a_train_or_data_key() -> None:
    # --set KEY=VALUE refuses a bare train/data key, which is only right while no model option has that name.
    import dataclasses

    from bicsnet.arch.backbone import BiCSNetConfig
    from bicsnet.config import SECTIONS
    from bicsnet.tasks import TASKS

    options = {f.name for f in dataclasses.fields(BiCSNetConfig)}.union(*(t.head_options for t in TASKS.values()))
    for section in ("train", "data"):
        keys = {f.name for f in dataclasses.fields(SECTIONS[section])}
        assert not options & keys, (section, options & keys)
