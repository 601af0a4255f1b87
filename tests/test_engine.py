"""Tests of the training engine: schedule, checkpoints, resume, NaN handling, tasks."""
from __future__ import annotations

import csv
import json
import math
import os
import pickle
import random
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from bicsnet.engine.checkpoint import (
    RunCheckpointer,
    load_model,
    load_state_into,
    load_training_state,
    save_model,
    save_training_state,
)
from bicsnet.weights import load_backbone_weights
from bicsnet.engine.distributed import CPUSyncBatchNorm, ResumableDistributedSampler, convert_sync_batchnorm
from bicsnet.engine.schedule import PAPER_STEP_MILESTONES, build_scheduler, lr_factor
from bicsnet.engine.seeding import SeededDataset, capture_rng_state, restore_rng_state
from bicsnet.engine.adapters import DetectionTask, EvalResult
from bicsnet.tasks import get_task
from bicsnet.engine.trainer import TrainConfig, Trainer, evaluate_model, parameter_groups
from bicsnet.errors import BicsnetError, CheckpointError, ConfigError

torch.set_num_threads(1)  # the test machine is small and shared


# --------------------------------------------------------------------------- helpers
class TinyNet(nn.Module):
    """Conv + BN + dropout classifier: exercises buffers, decay groups and model RNG."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.backbone(x).mean((2, 3))))


class ColourDataset(Dataset):
    """Class = dominant channel of a noisy image; random augmentation uses the global RNGs."""

    def __init__(self, n: int = 16, size: int = 8, num_classes: int = 3) -> None:
        g = torch.Generator().manual_seed(1234)
        self.labels = torch.randint(0, num_classes, (n,), generator=g)
        self.base = torch.rand(n, 3, size, size, generator=g) * 0.3

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.base[i].clone()
        img[int(self.labels[i]) % 3] += 0.7
        img = img + 0.05 * torch.rand_like(img) + 0.01 * random.random() + 0.01 * float(np.random.rand())
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, int(self.labels[i])


def config(tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(
        epochs=3, batch_size=4, lr=0.2, warmup_steps=2, schedule="cosine", log_every=1, ckpt_every_steps=3,
        eval_every_epochs=0, num_workers=0, device="cpu", deterministic=True, seed=7, out_dir=str(tmp_path),
        tensorboard=False,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def trainer(tmp_path: Path, dataset: Dataset | None = None, model: nn.Module | None = None, resume: bool = False,
            **overrides) -> Trainer:  # fmt: skip
    torch.manual_seed(0)
    model = model if model is not None else TinyNet()
    return Trainer(
        model, "classification", dataset if dataset is not None else ColourDataset(), None,
        config(tmp_path, **overrides), meta={"model": "tiny", "task": "classification", "num_classes": 5},
        resume=resume,
    )  # fmt: skip


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- schedule
def test_lr_factor_warmup_and_paper_step_decay():
    total, warmup = 3500, 100
    assert lr_factor(0, total, warmup, "step") == 0.0
    assert lr_factor(50, total, warmup, "step") == pytest.approx(0.5)
    assert lr_factor(100, total, warmup, "step") == 1.0
    m1, m2 = (round(f * total) for f in PAPER_STEP_MILESTONES)
    assert (m1, m2) == (3200, 3400)  # last 30/350 and 10/350 of training
    assert lr_factor(m1 - 1, total, warmup, "step") == 1.0
    assert lr_factor(m1, total, warmup, "step") == pytest.approx(0.1)
    assert lr_factor(m2 - 1, total, warmup, "step") == pytest.approx(0.1)
    assert lr_factor(m2, total, warmup, "step") == pytest.approx(0.01)
    assert lr_factor(10, 100, 0, "step", milestones=(0.5,), gamma=0.5) == 1.0
    assert lr_factor(50, 100, 0, "step", milestones=(0.5,), gamma=0.5) == 0.5


def test_lr_factor_cosine():
    assert lr_factor(0, 110, 10, "cosine") == 0.0
    assert lr_factor(10, 110, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(60, 110, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(110, 110, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(110, 110, 10, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    values = [lr_factor(s, 110, 10, "cosine") for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ConfigError):
        lr_factor(0, 10, 0, "linear")


def test_scheduler_steps_per_iteration_and_resumes():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = build_scheduler(opt, 20, 4, "cosine")
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.4 * lr_factor(s, 20, 4, "cosine") for s in range(8)])
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    sched2 = build_scheduler(opt2, 20, 4, "cosine")
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


# --------------------------------------------------------------------------- config
def test_train_config_round_trip_and_validation():
    cfg = TrainConfig(epochs=3, ema_decay=0.999, grad_clip=10.0, step_milestones=(0.5, 0.75), out_dir="x")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(data) == cfg
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ConfigError, match="nan_policy"):
        TrainConfig(nan_policy="ignore")
    with pytest.raises(ConfigError, match="step_milestones"):
        TrainConfig(step_milestones=(0.9, 0.5))
    with pytest.raises(ConfigError, match="epochs='3': expected int"):
        TrainConfig.from_dict({"epochs": "3"})
    with pytest.raises(ConfigError, match="grad_clip=True: expected float or None"):
        TrainConfig(grad_clip=True)
    assert TrainConfig(lr=1, out_dir=Path("o")).to_dict()["lr"] == 1.0


def test_no_weight_decay_on_bias_and_norm():
    model = TinyNet()
    decay, no_decay = parameter_groups(model, 4e-5)
    assert {id(p) for p in decay["params"]} == {id(model.backbone[0].weight), id(model.head.weight)}
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4  # 2 biases + BN weight/bias


# --------------------------------------------------------------------------- checkpoints
def test_model_round_trip_with_tied_weights(tmp_path):
    model = TinyNet()
    model.extra = nn.Linear(6, 6)
    model.alias = model.extra  # the same tensors under two names: safetensors refuses shared storage
    meta = {"model": "tiny", "num_classes": 5, "class_names": ["a", "b"], "cat_ids": [1, 3], "img_size": 64}
    save_model(tmp_path / "m.safetensors", model, meta)
    state, meta2 = load_model(tmp_path / "m.safetensors")
    assert meta2 == meta
    ref = model.state_dict()
    assert state.keys() == ref.keys()
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    fresh = TinyNet()
    fresh.extra = nn.Linear(6, 6)
    fresh.alias = fresh.extra
    report = load_state_into(fresh, state)
    assert not report.missing and not report.unexpected
    assert torch.equal(fresh.alias.weight, model.extra.weight)


def test_training_state_loads_with_weights_only(tmp_path):
    model = TinyNet()
    opt = torch.optim.SGD(parameter_groups(model, 1e-4), lr=0.1, momentum=0.9)
    sched = build_scheduler(opt, 10, 2, "step")
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    opt.step()
    sched.step()
    random.random(), np.random.rand(), torch.rand(1)
    state = {
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(), "rng": capture_rng_state(),
        "step": 1, "config": TrainConfig().to_dict(),
    }  # fmt: skip
    save_training_state(tmp_path / "s.pt", state)
    raw = torch.load(tmp_path / "s.pt", weights_only=True)  # plain torch, safe mode
    assert raw["step"] == 1
    loaded = load_training_state(tmp_path / "s.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    with pytest.raises(TypeError):
        save_training_state(tmp_path / "bad.pt", {"x": object()})


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"step": 1, "x": _Evil(marker)}, tmp_path / "evil_zip.pt")
    with open(tmp_path / "evil_raw.pt", "wb") as f:
        pickle.dump({"x": _Evil(marker)}, f)
    for name in ("evil_zip.pt", "evil_raw.pt"):
        with pytest.raises(CheckpointError, match=name):
            load_training_state(tmp_path / name)
    assert not marker.exists()


def test_damaged_files_raise_checkpoint_error(tmp_path):
    save_model(tmp_path / "m.safetensors", TinyNet(), {"model": "tiny"})
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 17])
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    for name, why in [("trunc", "truncated"), ("junk", "truncated"), ("foreign", "no 'bicsnet' metadata"),
                      ("missing", "not found")]:  # fmt: skip
        with pytest.raises(CheckpointError, match=f"{name}.safetensors.*{why}"):
            load_model(tmp_path / f"{name}.safetensors")
    save_training_state(tmp_path / "s.pt", {"step": torch.arange(1000)})
    (tmp_path / "s_trunc.pt").write_bytes((tmp_path / "s.pt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="s_trunc.pt"):
        load_training_state(tmp_path / "s_trunc.pt")


def test_shape_mismatch_refused_by_name_and_backbone_transfer(tmp_path):
    src = TinyNet(num_classes=5).state_dict()
    with pytest.raises(CheckpointError, match=r"head\.weight: \(5, 6\) in ck\.safetensors vs \(7, 6\)"):
        load_state_into(TinyNet(num_classes=7), src, source="ck.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        load_state_into(TinyNet(), {k: v for k, v in src.items() if k != "head.bias"})
    # --backbone-weights: only backbone.* is taken, whatever the head looks like.
    target = TinyNet(num_classes=7)
    report = load_state_into(target, src, strict=True, prefix_filter="backbone.")
    assert report.loaded == sorted(k for k in src if k.startswith("backbone."))
    assert torch.equal(target.backbone[0].weight, src["backbone.0.weight"])
    # The same from a file, as `--backbone-weights` does.
    save_model(tmp_path / "cls.safetensors", TinyNet(num_classes=5), {"task": "classification"})
    report = load_backbone_weights(TinyNet(num_classes=2), tmp_path / "cls.safetensors")
    assert len(report.loaded) == 7 and not report.missing and not report.unexpected  # conv 2 + BN 5
    # Remapping the prefix: into a bare backbone module.
    bare = TinyNet().backbone
    report = load_state_into(bare, src, prefix_filter="backbone.", target_prefix="")
    assert torch.equal(bare[0].weight, src["backbone.0.weight"]) and not report.missing


def test_run_checkpointer_rotation_and_pairing(tmp_path):
    ck = RunCheckpointer(tmp_path)
    model = TinyNet()
    for step in (1, 2, 3):
        with torch.no_grad():
            model.head.bias.fill_(step)
        ck.save(step, model, {"m": 1}, {"step": step}, ema_state=model)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["last.safetensors", "last.state.pt", "last_ema.safetensors",
                     "prev.safetensors", "prev.state.pt", "prev_ema.safetensors"]  # fmt: skip
    latest = ck.latest()
    assert latest.step == 3 and latest.weights.name == "last.safetensors"
    assert float(load_model(latest.weights)[0]["head.bias"][0]) == 3
    # A kill between rotations can leave a state file next to weights of another step:
    # they are never paired, and the newest complete checkpoint is used.
    os.replace(tmp_path / "prev.state.pt", tmp_path / "last.state.pt")
    assert ck.latest() is None or ck.latest().step != 3
    assert all(s.step == 2 for s in ck.scan())
    # Temporary names of an interrupted save still count if complete.
    ck2 = RunCheckpointer(tmp_path / "b")
    ck2.save(5, model, {}, {"step": 5})
    os.replace(tmp_path / "b" / "last.safetensors", tmp_path / "b" / "incoming-x.safetensors")
    assert ck2.latest().step == 5


def test_run_checkpointer_reads_each_training_state_once(tmp_path, monkeypatch):
    """scan() runs on every save; a training state (a full torch.save file) is read once, renames included."""
    from bicsnet.engine import checkpoint as ckpt

    loads: list[str] = []
    real = ckpt.load_training_state
    monkeypatch.setattr(ckpt, "load_training_state", lambda p, **kw: (loads.append(Path(p).name), real(p, **kw))[1])
    ck = RunCheckpointer(tmp_path)
    model = TinyNet()
    for step in (1, 2, 3, 4):
        ck.save(step, model, {}, {"step": step})
    assert len(loads) == 4  # one per file written, not one per file per save
    assert ck.latest().step == 4 and len(loads) == 4
    # A file replaced behind its back (new identity) is read again, and a fresh checkpointer reads each once.
    os.replace(tmp_path / "prev.state.pt", tmp_path / "last.state.pt")
    assert ck.latest() is None or ck.latest().step != 4
    assert RunCheckpointer(tmp_path).scan() == ck.scan()


# --------------------------------------------------------------------------- sampler / seeding / BN
def test_sampler_sharding_resume_and_determinism():
    full = ResumableDistributedSampler(10, num_replicas=1, rank=0, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == list(range(10))
    again = ResumableDistributedSampler(10, num_replicas=1, rank=0, seed=3)
    again.set_epoch(2)
    again.set_start_index(4)
    assert list(again) == order[4:] and len(again) == 6
    again.set_epoch(3)
    assert list(again) != order
    shards = [ResumableDistributedSampler(10, 3, r, shuffle=False, pad=False) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))  # each sample exactly once
    padded = [list(ResumableDistributedSampler(10, 3, r, seed=1)) for r in range(3)]
    assert {len(p) for p in padded} == {4} and set(sum(padded, [])) == set(range(10))
    dropped = [list(ResumableDistributedSampler(10, 3, r, seed=1, drop_last=True)) for r in range(3)]
    assert {len(p) for p in dropped} == {3} and len(set(sum(dropped, []))) == 9


def test_seeded_dataset_is_order_independent_and_preserves_rng():
    ds = SeededDataset(ColourDataset(), seed=5)
    torch.manual_seed(0)
    a = ds[(1, 3)][0]
    state = torch.get_rng_state()
    torch.manual_seed(99)
    ds[(0, 0)]
    b = ds[(1, 3)][0]
    assert torch.equal(a, b)
    assert not torch.equal(ds[(2, 3)][0], a)  # another epoch, another augmentation
    torch.manual_seed(0)
    ds[(1, 3)]
    assert torch.equal(torch.get_rng_state(), state)


def test_cpu_sync_batchnorm_without_process_group_is_batchnorm():
    bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.SyncBatchNorm(4))
    sync = convert_sync_batchnorm(bn, torch.device("cpu"))
    assert isinstance(sync[1], CPUSyncBatchNorm) and isinstance(sync[2], CPUSyncBatchNorm)
    bn, sync = bn[:2], sync[:2]
    ref = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ref.load_state_dict(bn.state_dict(), strict=False)
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(sync(x), ref(x), atol=1e-6)
    assert torch.allclose(sync[1].running_var, ref[1].running_var)


# --------------------------------------------------------------------------- trainer
def _final_state(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path)[0]


@pytest.mark.parametrize(("num_workers", "channels_last"), [(0, False), (1, False), (0, True)])
def test_resume_gives_bitwise_identical_weights(tmp_path, monkeypatch, num_workers, channels_last):
    overrides = dict(ema_decay=0.9, grad_clip=5.0, num_workers=num_workers, channels_last=channels_last)
    full = trainer(tmp_path / "full", **overrides)
    full.fit()

    save = Trainer.save_checkpoint

    def save_then_die(self):
        save(self)
        if self.step == 6:  # killed right after the mid-epoch-2 checkpoint
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "cut", **overrides).fit()
    monkeypatch.undo()
    assert RunCheckpointer(tmp_path / "cut" / "checkpoints").latest().step == 6
    resumed = trainer(tmp_path / "cut", resume=True, **overrides)
    assert resumed.step == 6
    resumed.fit()

    for name in ("model.safetensors", "checkpoints/last.safetensors", "checkpoints/last_ema.safetensors"):
        a, b = _final_state(tmp_path / "full" / name), _final_state(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    log_full, log_cut = read_log(tmp_path / "full" / "log.csv"), read_log(tmp_path / "cut" / "log.csv")
    assert [r["step"] for r in log_cut] == [str(s) for s in range(1, 13)]
    assert [r["loss"] for r in log_cut] == [r["loss"] for r in log_full]
    # A fresh (non-resume) run never silently overwrites an existing one.
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        trainer(tmp_path / "cut")


def test_channels_last_training_same_model_other_layout(tmp_path, capsys):
    """``channels_last=True``: the weights, their EMA and the momentum stay NHWC through training;
    the run computes what the NCHW run does (to float rounding) and its files load into either layout."""
    overrides = dict(ema_decay=0.9, epochs=2)
    plain = trainer(tmp_path / "nchw", **overrides)
    plain.fit()
    assert "channels-last" not in capsys.readouterr().out
    nhwc = trainer(tmp_path / "nhwc", channels_last=True, **overrides)
    nhwc.fit()
    assert "precision float32, channels-last, lr" in capsys.readouterr().out  # the start line says so
    conv = nhwc.model.backbone[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nhwc.ema.module.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.optimizer.state[conv]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)
    assert plain.model.backbone[0].weight.is_contiguous()
    log_a, log_b = read_log(tmp_path / "nchw" / "log.csv"), read_log(tmp_path / "nhwc" / "log.csv")
    assert len(log_a) == len(log_b) == 8
    for a, b in zip(log_a, log_b):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-4, abs=1e-6)
    a, b = _final_state(tmp_path / "nchw" / "model.safetensors"), _final_state(tmp_path / "nhwc" / "model.safetensors")
    assert a.keys() == b.keys() and all(b[k].is_contiguous() for k in b)
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    assert json.loads((tmp_path / "nhwc" / "config.json").read_text())["train"]["channels_last"] is True


_FAULTS_AFTER_TRAINER = """
import resource, sys, torch
from bicsnet.engine import TrainConfig, Trainer

def faults():  # minor page faults of three 64 MiB tensors, each freed before the next
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        x = torch.empty(16 << 20)
        x.fill_(1.0)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

off = {"keep_freed_memory": False} if sys.argv[1] == "off" else {}  # else the default
config = TrainConfig(device="cpu", out_dir=sys.argv[2], **off)
Trainer(torch.nn.Conv2d(3, 5, 1), "classification", None, None, config, meta={"num_classes": 5})
faults()  # the first block grows the heap once
print(faults())
if sys.argv[1] == "default":  # bench's memory measurement pins the thresholds back: faults again
    from bicsnet.engine.host_memory import pin_malloc_thresholds, trim_heap
    assert pin_malloc_thresholds()
    trim_heap()  # as bench does: the block kept in the heap goes back too
    # The better of two rounds: once in a full test run one of the three blocks came back without
    # faults (not reproduced alone); with thresholds not pinned both rounds stay near zero.
    print(max(faults(), faults()))
"""


@pytest.mark.skipif(not (sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")),
                    reason="glibc's malloc only")
def test_cpu_trainer_keeps_freed_memory_for_reuse(tmp_path):
    """A Trainer on the CPU makes malloc reuse freed blocks: a 64 MiB tensor allocated again is not
    page-faulted in again (16384 faults of 4 KiB each time by default); ``keep_freed_memory=False``
    leaves malloc as it was. In a fresh process, as the setting is process-wide."""
    def faults(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS_AFTER_TRAINER, mode, str(tmp_path / mode)],
                             capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return [int(n) for n in out.stdout.split()[-2 if mode == "default" else -1:]]

    kept, pinned = faults("default")
    assert kept < 1000
    assert pinned > 3 * 16384 * 0.9  # what bench measures memory under
    assert faults("off")[0] > 3 * 16384 * 0.9


class NanAfter(nn.Module):
    """Wraps a model and returns NaN logits from the ``bad_call``-th forward on."""

    def __init__(self, inner: nn.Module, bad_call: int) -> None:
        super().__init__()
        self.inner, self.calls, self.bad_call = inner, 0, bad_call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls >= self.bad_call else out


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path):
    run = trainer(tmp_path, model=NanAfter(TinyNet(), bad_call=5), ckpt_every_steps=2)
    with pytest.raises(BicsnetError, match=r"non-finite loss at step 5 \(epoch 2\): loss_ce=nan; last good checkpoint"):
        run.fit()
    latest = RunCheckpointer(tmp_path / "checkpoints").latest()
    assert latest.step == 4
    weights, _ = load_model(latest.weights)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    load_training_state(latest.state)
    assert not (tmp_path / "model.safetensors").exists()


def test_nan_loss_skip_policy_counts_and_finishes(tmp_path):
    class NanOnce(NanAfter):
        def forward(self, x):
            self.calls += 1
            out = self.inner(x)
            return out * float("nan") if self.calls == self.bad_call else out

    run = trainer(tmp_path, model=NanOnce(TinyNet(), bad_call=3), nan_policy="skip", epochs=1)
    run.fit()
    assert run.skipped_steps == 1 and run.step == 4
    rows = read_log(tmp_path / "log.csv")
    assert rows[-1]["skipped"] == "1"
    weights, _ = load_model(tmp_path / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_loss_decreases_and_classification_eval(tmp_path):
    pytest.importorskip("bicsnet.metrics.classification")
    data = ColourDataset(n=32)
    torch.manual_seed(0)
    run = Trainer(
        TinyNet(), "classification", data, ColourDataset(n=32), config(tmp_path, epochs=6, lr=0.5, batch_size=8),
        meta={"model": "tiny"},
    )  # fmt: skip
    metrics = run.fit()
    rows = read_log(tmp_path / "log.csv")
    first = sum(float(r["loss"]) for r in rows[:3]) / 3
    last = sum(float(r["loss"]) for r in rows[-3:]) / 3
    assert last < 0.7 * first
    assert set(metrics) >= {"top1", "top5"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()


def test_loss_decreases_without_metrics(tmp_path):
    """Same learnable problem, training only (no metrics module needed)."""
    torch.manual_seed(0)
    run = Trainer(TinyNet(), "classification", ColourDataset(n=32), None,
                  config(tmp_path, epochs=6, lr=0.5, batch_size=8), meta={})  # fmt: skip
    assert run.fit() == {}
    rows = read_log(tmp_path / "log.csv")
    assert float(rows[-1]["loss"]) < 0.7 * float(rows[0]["loss"])
    # The rate each logged step used: warm-up from 0 over 2 steps, then cosine.
    assert [float(r["lr"]) for r in rows[:3]] == pytest.approx([0.0, 0.25, 0.5 * lr_factor(2, 24, 2, "cosine")])


# --------------------------------------------------------------------------- tasks
class _FakeDetector(nn.Module):
    def forward(self, images, targets=None):
        return [
            {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "scores": torch.tensor([0.9]),
             "labels": torch.tensor([1]), "masks": torch.ones(1, 1, 8, 8)}
            for _ in images
        ]  # fmt: skip


def test_detection_evaluate_gathers_results(monkeypatch):
    calls = {}

    def to_results(outputs, image_ids, cat_ids, with_masks=False):
        calls.setdefault("with_masks", set()).add(with_masks)
        return [{"image_id": i, "category_id": cat_ids[0], "bbox": [0, 0, 4, 4], "score": 0.9} for i in image_ids]

    def coco_evaluation(coco_gt, results, iou_types=("bbox",), backend="pycocotools"):
        calls["iou_types"] = tuple(iou_types)
        return types.SimpleNamespace(metrics={t: {"AP": 0.5} for t in iou_types}, pr_curves={})

    fake = types.ModuleType("bicsnet.metrics.coco")
    fake.detections_to_coco_results, fake.coco_evaluation = to_results, coco_evaluation
    fake.PR_CURVES_ARTIFACT, fake.DEFAULT_COCO_BACKEND = "pr_curves.json", "pycocotools"
    import bicsnet.metrics  # the real package first: its __init__ imports names the fake lacks

    monkeypatch.setitem(sys.modules, "bicsnet.metrics.coco", fake)
    monkeypatch.setattr(bicsnet.metrics, "coco", fake, raising=False)
    dataset = types.SimpleNamespace(coco=object(), cat_ids=[7, 9])
    loader = [([torch.rand(3, 8, 8)] * 2, [{"image_id": 1}, {"image_id": torch.tensor(2)}])]
    result = get_task("instance").adapter().evaluate(_FakeDetector(), loader, torch.device("cpu"), dataset)
    assert isinstance(result, EvalResult)
    assert result.metrics == {"bbox": {"AP": 0.5}, "segm": {"AP": 0.5}}
    assert [r["image_id"] for r in result.artifacts["detections.json"]] == [1, 2]
    result = DetectionTask(with_masks=False).evaluate(_FakeDetector(), loader, torch.device("cpu"), dataset)
    assert calls["iou_types"] == ("bbox",) and set(result.metrics) == {"bbox"}


def test_segmentation_losses_ignore_index():
    task = get_task("segmentation").adapter(num_classes=3)
    model = nn.Conv2d(3, 3, 1)
    images, masks = torch.rand(2, 3, 8, 8), torch.full((2, 8, 8), 255)
    masks[:, :2] = 1
    loss = task.losses(model, (images, masks), torch.device("cpu"))["loss_ce"]
    logits = model(images)
    expected = nn.functional.cross_entropy(logits[:, :, :2], masks[:, :2])
    assert torch.allclose(loss, expected)
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("pose")
    assert math.isfinite(float(loss.detach()))


def test_segmentation_evaluate_model():
    pytest.importorskip("bicsnet.metrics.segmentation")
    from torch.utils.data import TensorDataset

    masks = torch.randint(0, 3, (5, 8, 8))
    masks[0, :2] = 255
    images = nn.functional.one_hot(masks.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    model = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3).view(3, 3, 1, 1))  # perfect predictor
    result = evaluate_model(model, "segmentation", TensorDataset(images, masks), 2, device="cpu", num_classes=3)
    assert result.metrics["mIoU"] == pytest.approx(1.0) and result.metrics["pixel_acc"] == pytest.approx(1.0)
    assert set(result.metrics) == {"mIoU", "pixel_acc", "per_class_iou", "confusion_matrix"}
