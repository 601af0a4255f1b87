"""Weights trained elsewhere: file formats, wrapper prefixes, the report, strictness, the train flags."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from safetensors.torch import save_file

import bicsnet
from bicsnet.cli.main import main
from bicsnet.data import generate_synthetic
from bicsnet.engine.checkpoint import save_model
from bicsnet.engine.trainer import Trainer
from bicsnet.errors import CheckpointError
from bicsnet.weights import load_backbone_weights, load_weights

torch.set_num_threads(1)  # the test machine is small and shared

MODEL = "bicsnet_48_tiny"
BACKBONE_TENSORS = 874  # state-dict entries of the tiny backbone (parameters and BN buffers)
SYNTH = ["--synth-train", "8", "--synth-val", "4", "--synth-size", "64"]


def _model(task: str = "classification", num_classes: int | None = 5, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return bicsnet.create_model(MODEL, task, num_classes)


def _clone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model_state: dict[str, torch.Tensor], source: dict[str, torch.Tensor], rename: Callable[[str], str] = str) -> bool:
    """Every source tensor equals the model's under ``rename(name)``, and the two differ somewhere else than a counter."""
    return all(torch.equal(model_state[rename(k)], v) for k, v in source.items())


@pytest.fixture(scope="module")
def cls5() -> dict[str, torch.Tensor]:
    """A 5-class classifier's state dict (seed 1); every test model starts from seed 0."""
    return _clone(_model(seed=1))


# --------------------------------------------------------------------------- formats
def _write_formats(sd: dict[str, torch.Tensor], tmp: Path) -> dict[str, tuple[Path, str, str]]:
    """file -> (path, expected entry, expected renaming) for every format users bring."""
    files = {
        "plain.pth": (sd, "", ""),  # torch.save(model.state_dict())
        "wrapped.pt": ({"epoch": 3, "model": sd, "optimizer": {"lr": 0.1}}, "model", ""),
        "ddp.pth.tar": ({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 9}, "state_dict", "'module.' -> ''"),
        "compiled.bin": ({"_orig_mod." + k: v for k, v in sd.items()}, "", "'_orig_mod.' -> ''"),
        "ema.pth": ({"model_ema": {"ema.module." + k: v for k, v in sd.items()}}, "model_ema", "'ema.module.' -> ''"),
        "legacy.pt": (sd, "", ""),  # torch's pre-1.6 (non-zip) serialisation
    }
    out = {}
    for name, (obj, entry, renamed) in files.items():
        torch.save(obj, tmp / name, _use_new_zipfile_serialization=name != "legacy.pt")
        out[name] = (tmp / name, entry, renamed)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "nometa.safetensors"))  # no bicsnet metadata
    out["nometa.safetensors"] = (tmp / "nometa.safetensors", "", "")
    (tmp / "run").mkdir()
    save_model(tmp / "run" / "model.safetensors", sd, {"model": {"name": MODEL}, "task": "classification"})
    out["run directory"] = (tmp / "run", "", "")  # bicsnet's own checkpoint, by its run directory
    return out


def test_every_format_loads_the_same_values(cls5, tmp_path, caplog) -> None:
    files = _write_formats(cls5, tmp_path)
    model = _model()
    init = _clone(model)
    assert sum(not torch.equal(init[k], v) for k, v in cls5.items()) == 129  # the seeds differ: every conv and linear weight
    for name, (path, entry, renamed) in files.items():
        model.load_state_dict(init)  # start every file from the same other weights
        report = load_weights(model, path)
        assert _same(model.state_dict(), cls5), name
        assert (len(report.loaded), report.total, report.entry, report.renamed) == (876, 876, entry, renamed), name
        assert not (report.missing or report.unexpected or report.mismatched or report.ignored), name
    with caplog.at_level("INFO", logger="bicsnet.weights"):
        model = bicsnet.create_model(MODEL, "classification", 5, pretrained=files["ddp.pth.tar"][0])
    assert _same(model.state_dict(), cls5)
    assert "loaded 876 of 876 tensors (from entry 'state_dict', names 'module.' -> '')" in caplog.text


def test_bare_backbone_into_task_model_and_back(cls5, tmp_path) -> None:
    backbone = {k[len("backbone.") :]: v for k, v in cls5.items() if k.startswith("backbone.")}
    torch.save(backbone, tmp_path / "backbone.pth")
    seg = _model("segmentation", 4)
    head_before = {k: v for k, v in _clone(seg).items() if k.startswith("head.")}
    report = load_weights(seg, tmp_path / "backbone.pth")
    assert (len(report.loaded), report.total, report.renamed) == (BACKBONE_TENSORS, 888, "'' -> 'backbone.'")
    assert len(report.missing) == 14 and all(k.startswith("head.") for k in report.missing)
    assert _same(seg.state_dict(), backbone, lambda k: "backbone." + k)
    assert _same(seg.state_dict(), head_before)  # the head is left as it was
    assert "loaded 874 of 888 tensors" in report.summary() and "14 missing from the file (head." in report.summary()

    # A whole classifier into a bare backbone: its head is unexpected ...
    torch.save(cls5, tmp_path / "cls.pth")
    bare = bicsnet.create_model(MODEL)
    report = load_weights(bare, tmp_path / "cls.pth")
    assert (len(report.loaded), report.renamed, report.unexpected) == (BACKBONE_TENSORS, "'backbone.' -> ''", ["head.fc.bias", "head.fc.weight"])
    assert _same(bare.state_dict(), backbone)
    with pytest.raises(CheckpointError, match=r"cls\.pth: 2 unexpected, not in the model \(head\.fc\.bias, head\.fc\.weight\)"):
        load_weights(bare, tmp_path / "cls.pth", strict=True)
    # ... unless only the backbone's prefix is asked for.
    report = load_weights(bicsnet.create_model(MODEL), tmp_path / "cls.pth", strict=True, prefix="backbone")
    assert len(report.loaded) == BACKBONE_TENSORS and report.ignored == ["head.fc.bias", "head.fc.weight"]
    with pytest.raises(CheckpointError, match=r"cls\.pth: no tensors under 'neck\.'; the file's names are e\.g\. backbone\."):
        load_weights(bare, tmp_path / "cls.pth", prefix="neck")


def test_shape_mismatch_is_skipped_and_reported_or_strict_refuses(cls5, tmp_path) -> None:
    torch.save({"module." + k: v for k, v in cls5.items()}, tmp_path / "cls5.pth")
    model = _model(num_classes=7)
    before = _clone(model)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, tmp_path / "cls5.pth", strict=True)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "cls5.pth")) and "2 tensor shape mismatch(es)" in message
    assert "head.fc.bias: (5,) in cls5.pth vs (7,) in model" in message and "head.fc.weight: (5, 64)" in message
    assert _same(model.state_dict(), before)  # a refused file changes nothing

    report = load_weights(model, tmp_path / "cls5.pth")
    assert report.mismatched == [("head.fc.bias", (5,), (7,)), ("head.fc.weight", (5, 64), (7, 64))]
    assert (len(report.loaded), report.total, report.missing, report.unexpected) == (BACKBONE_TENSORS, 876, [], [])
    state = model.state_dict()
    assert _same(state, {k: v for k, v in cls5.items() if k.startswith("backbone.")})
    assert torch.equal(state["head.fc.weight"], before["head.fc.weight"])  # skipped, not half-copied
    assert report.summary().startswith("loaded 874 of 876 tensors (names 'module.' -> ''); 2 tensor shape mismatch(es)")


def test_a_file_of_another_model_is_an_error_even_without_strict(tmp_path) -> None:
    torch.save({"encoder.conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: no tensor of the file fits the model.*encoder\.conv\.weight"):
        load_weights(_model(), tmp_path / "other.pth")
    # Scalars (BatchNorm's step counters) fit any model with BatchNorm: loading only them proves nothing.
    model = _model()
    torch.save({k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}, tmp_path / "counters.pth")
    with pytest.raises(CheckpointError, match=r"counters\.pth: no tensor of the file fits the model"):
        load_weights(model, tmp_path / "counters.pth")
    # Same names, other shapes: the message lists the mismatches.
    torch.save({k: torch.zeros(2, *v.shape) for k, v in model.state_dict().items()}, tmp_path / "shapes.pth")
    with pytest.raises(CheckpointError, match=r"shapes\.pth: no tensor .*; 876 tensor shape mismatch\(es\): backbone\."):
        load_weights(model, tmp_path / "shapes.pth")


def test_format_is_told_by_content_not_suffix(tmp_path) -> None:
    from bicsnet.engine.checkpoint import sniff_format

    low_bytes = set()
    for n in range(1, 160):  # header lengths across 0x80, a pickle's first byte
        save_file({"w" * n: torch.zeros(2)}, str(tmp_path / "a.pth"))
        low_bytes.add((tmp_path / "a.pth").read_bytes()[0])
        assert sniff_format(tmp_path / "a.pth") == "safetensors", n
    assert 0x80 in low_bytes
    for zipped in (True, False):  # a torch.save file misnamed .safetensors still loads
        torch.save({"weight": torch.full((2, 1), 3.0)}, tmp_path / "b.safetensors", _use_new_zipfile_serialization=zipped)
        assert sniff_format(tmp_path / "b.safetensors") == "torch"
        layer = torch.nn.Linear(1, 2, bias=False)
        assert load_weights(layer, tmp_path / "b.safetensors").loaded == ["weight"]
        assert torch.equal(layer.weight.detach(), torch.full((2, 1), 3.0))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unreadable_files_are_one_error_naming_the_file(cls5, tmp_path) -> None:
    torch.save(cls5, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.bin").write_text("not weights")
    torch.save({"model": _Evil(tmp_path / "PWNED")}, tmp_path / "pickle.pth")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "nostate.pt")
    cases = {
        "truncated.pth": "unreadable weights file (truncated or corrupt?)",
        "text.bin": "neither safetensors nor torch.save data",
        "pickle.pth": "refused: it contains Python objects",
        "nostate.pt": "no state dict found: the file holds a dict with keys 'epoch', 'optimizer'",
        "missing.pth": "weights file not found",
    }
    for name, why in cases.items():
        with pytest.raises(CheckpointError) as err:
            load_weights(_model(), tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)) and why in str(err.value), str(err.value)
    assert not (tmp_path / "PWNED").exists()  # weights_only: the pickled code never ran


# --------------------------------------------------------------------------- train flags, CLI and API
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, 8, 4, 64)
    return root


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """The model's weights when training starts; training itself is skipped (the loading is what is tested)."""
    seen: list[dict[str, torch.Tensor]] = []

    def fit(self: Trainer) -> dict[str, Any]:
        seen.append(_clone(self.model))
        if self.ema is not None:
            assert _same(_clone(self.ema.module), seen[-1])  # EMA starts from the loaded weights
        return {}

    monkeypatch.setattr(Trainer, "fit", fit)
    return seen


def _train(task: str, synth: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--task", task, "--model", MODEL, "--img-size", "64", "--synth-dir", str(synth), *SYNTH,
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--out", str(out), *extra]  # fmt: skip


def test_train_weights_flag_loads_what_fits_and_records_it(cls5, synth, tmp_path, started, capsys) -> None:
    torch.save({"state_dict": {"module." + k: v for k, v in cls5.items()}}, tmp_path / "cls5.pth")
    # The synthetic set has 6 classes: the 5-class head does not fit and is skipped.
    assert main(_train("classification", synth, tmp_path / "run", "--weights", str(tmp_path / "cls5.pth"))) == 0
    out = capsys.readouterr().out
    assert f"weights {tmp_path / 'cls5.pth'}: loaded 874 of 876 tensors (from entry 'state_dict', names 'module.' -> '')" in out
    assert "head.fc.weight: (5, 64) in cls5.pth vs (6, 64) in model" in out
    (weights,) = started
    assert _same(weights, {k: v for k, v in cls5.items() if k.startswith("backbone.")})
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert (stored["weights"], stored["strict_weights"], stored["backbone_weights"]) == (str(tmp_path / "cls5.pth"), False, None)

    # --strict: one line naming the file and the tensors, exit status 2, nothing trained.
    code = main(_train("classification", synth, tmp_path / "strict", "--weights", str(tmp_path / "cls5.pth"), "--strict"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(started) == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"bicsnet train: error: {tmp_path / 'cls5.pth'}: 2 tensor shape mismatch(es): head.fc.bias: (5,)")


def test_python_api_weights_option(cls5, synth, tmp_path, started) -> None:
    cls6 = _clone(_model(num_classes=6, seed=2))
    torch.save({"model": cls6}, tmp_path / "cls6.pt")
    result = bicsnet.train({
        "model": {"name": MODEL, "task": "classification", "img_size": 64, "weights": str(tmp_path / "cls6.pt"), "strict_weights": True},
        "data": {"synth_root": str(synth), "synth_train": 8, "synth_val": 4, "synth_size": 64},
        "train": {"batch_size": 2, "num_workers": 0, "device": "cpu", "out_dir": str(tmp_path / "api")},
    })  # fmt: skip
    assert _same(started[0], cls6)  # every tensor, the head included
    assert result.config.model.weights == str(tmp_path / "cls6.pt") and result.config.model.strict_weights is True


def test_detector_backbone_into_segmentation_via_train_flag(synth, tmp_path, started, capsys) -> None:
    det = _clone(_model("detection", 6, seed=3))
    det_backbone = {k: v for k, v in det.items() if k.startswith("backbone.")}
    save_model(tmp_path / "det.safetensors", det, {"model": {"name": MODEL}, "task": "detection"})  # bicsnet's own
    torch.save({"ema": {"module." + k: v for k, v in det.items()}}, tmp_path / "det_ddp.pth")  # another trainer's
    seg = _model("segmentation", 7)
    seg_head = {k: v for k, v in _clone(seg).items() if k.startswith("head.")}
    assert main(_train("segmentation", synth, tmp_path / "seg", "--backbone-weights", str(tmp_path / "det_ddp.pth"))) == 0
    out = capsys.readouterr().out
    assert (f"backbone_weights {tmp_path / 'det_ddp.pth'}: loaded 874 of 874 tensors (from entry 'ema', "
            "names 'module.backbone.' -> 'backbone.'); 212 other file tensors ignored (module.head.") in out  # fmt: skip
    (weights,) = started
    assert _same(weights, det_backbone)
    assert _same(weights, seg_head)  # the head keeps its seeded initialisation (the run's seed is 0, as here)
    # The library call behind the flag, on bicsnet's own checkpoint.
    report = load_backbone_weights(seg, tmp_path / "det.safetensors")
    assert (len(report.loaded), report.total, report.renamed, len(report.ignored)) == (874, 874, "", 212)
    assert _same(seg.state_dict(), det_backbone) and _same(seg.state_dict(), seg_head)
    # A backbone of another topology (no Spatial Fusion Modules) lacks tensors: refused, naming the file.
    torch.save(bicsnet.create_model("bicsnet_48_no_sfm", "classification", 5).state_dict(), tmp_path / "no_sfm.pth")
    with pytest.raises(CheckpointError, match=r"no_sfm\.pth: .*\d+ missing from the file \(backbone\.fusions\."):
        load_backbone_weights(seg, tmp_path / "no_sfm.pth")


def test_cli_refuses_bad_weights_in_one_line(cls5, synth, tmp_path, started, capsys) -> None:
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    torch.save(cls5, tmp_path / "plain.pth")
    (tmp_path / "net.onnx").write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(64))  # an ONNX protobuf's first bytes
    cases = [
        (_train("classification", synth, tmp_path / "a", "--weights", str(tmp_path / "corrupt.pth")),
         f"{tmp_path / 'corrupt.pth'}: unreadable weights file (truncated or corrupt?)"),
        (_train("classification", synth, tmp_path / "b", "--weights", str(tmp_path / "nope.pth")), f"{tmp_path / 'nope.pth'}: weights file not found"),
        (_train("classification", synth, tmp_path / "c", "--weights", str(tmp_path / "plain.pth"), "--backbone-weights", str(tmp_path / "plain.pth")),
         "--weights (model.weights) and --backbone-weights (model.backbone_weights): give one"),
        (_train("classification", synth, tmp_path / "d", "--strict"),
         "--strict (model.strict_weights) applies to --weights (model.weights), which is not given"),
        (_train("classification", synth, tmp_path / "e", "--weights", str(tmp_path / "net.onnx")),
         f"{tmp_path / 'net.onnx'}: an exported ONNX model, not a weights file"),
        (["eval", "--checkpoint", str(tmp_path / "plain.pth"), "--out", str(tmp_path / "ev")],
         f"{tmp_path / 'plain.pth'}: a PyTorch (torch.save) weights file, not a bicsnet checkpoint"),
    ]  # fmt: skip
    for argv, needle in cases:
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert "bicsnet train --weights" in err and "pretrained=" in err  # eval says where such a file goes
    assert not started


def test_batchnorm_file_into_a_groupnorm_head_says_why(tmp_path, caplog) -> None:
    """A BN-head detector's weights into the small-data recipe's GN head: the leftover BN statistics are explained,
    and create_model(pretrained=...) warns (not only logs at INFO) about a partial load."""
    torch.manual_seed(0)
    bn = bicsnet.create_model(MODEL, "detection", 3)
    torch.save(bn.state_dict(), tmp_path / "bn.pth")
    gn = bicsnet.create_model(MODEL, "detection", 3, head_norm="gn")
    report = load_weights(gn, tmp_path / "bn.pth")
    assert report.unexpected and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in report.unexpected)
    assert "BatchNorm statistics where the model normalises otherwise" in report.summary()
    assert "--set head_norm=bn or --recipe paper" in report.summary()
    with caplog.at_level("WARNING", logger="bicsnet.weights"):
        bicsnet.create_model(MODEL, "detection", 3, head_norm="gn", pretrained=tmp_path / "bn.pth")
    assert any(r.levelname == "WARNING" and "unexpected" in r.getMessage() for r in caplog.records)


def test_a_runs_file_rebuilds_the_model_it_was_trained_as(tmp_path, caplog) -> None:
    """create_model(pretrained=<a run's model.safetensors>), the README's route, builds the model with the options
    the file records: a small-data-recipe run (GroupNorm head) used to come back with a BatchNorm head holding the
    GroupNorm affine weights and fresh running statistics, a silently different model, with a warning only."""
    from bicsnet.engine.checkpoint import save_model

    torch.manual_seed(0)
    trained = bicsnet.create_model(MODEL, "detection", 3, head_norm="gn").eval()
    run = tmp_path / "run"
    run.mkdir()
    # What a run writes (bicsnet.models.factory.model_meta): the model's own description first.
    meta = {"model": dict(trained.bicsnet_config), "task": "detection", "img_size": 128, "num_classes": 3}
    save_model(run / "model.safetensors", trained, meta)
    for where in (run / "model.safetensors", run):  # the file, or the run directory
        caplog.clear()
        with caplog.at_level("INFO", logger="bicsnet.weights"):
            again = bicsnet.create_model(MODEL, "detection", 3, pretrained=where).eval()
        assert again.bicsnet_config["overrides"] == {"head_norm": "gn"}
        assert not [r for r in caplog.records if r.levelname == "WARNING"]  # every tensor found its place
        a, b = trained.state_dict(), again.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Options given explicitly win (and the partial load is warned about, as before).
    with caplog.at_level("WARNING", logger="bicsnet.weights"):
        bn = bicsnet.create_model(MODEL, "detection", 3, head_norm="bn", pretrained=run)
    assert bn.bicsnet_config["overrides"]["head_norm"] == "bn"
    assert any(r.levelname == "WARNING" and "missing" in r.getMessage() for r in caplog.records)
    # Another model's or task's file lends no options: only its tensors that fit.
    cls = bicsnet.create_model(MODEL, "classification", 3, pretrained=run)
    assert "head_norm" not in cls.bicsnet_config["overrides"]
