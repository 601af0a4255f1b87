"""``--device`` (auto|cpu|cuda|cuda:N|mps), ``--amp`` (bf16|fp16) and ``--accumulate N`` in the training engine.

What can be checked on a CPU machine is checked here: device parsing and its
errors (CUDA / MPS availability mocked through torch's public functions), the
precision rule, legacy ``amp: true`` configurations, bf16 autocast on the CPU,
fp16 with its gradient scaler (unscaled before clipping, saved for exact
resume), and gradient accumulation (the same samples, learning rates and
weights as one large batch; exact resume; DDP with ``no_sync``).
"""
from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator
from unittest import mock

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from bicsnet.cli.main import main
from bicsnet.config import RunConfig, load_run_config
from bicsnet.engine.checkpoint import RunCheckpointer, load_model, load_training_state
from bicsnet.engine.distributed import parse_device, resolve_device
from bicsnet.engine.hooks import HookBase
from bicsnet.engine.trainer import TrainConfig, Trainer, resolve_amp
from bicsnet.errors import CheckpointError, ConfigError

torch.set_num_threads(1)  # the test machine is small and shared

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@contextlib.contextmanager
def machine(cuda: int = 0, mps: bool = False, bf16: bool = True, native_bf16: bool = True) -> Iterator[None]:
    """Pretend this machine has ``cuda`` GPUs and / or MPS (torch's public availability functions), no torchrun.

    ``bf16`` / ``native_bf16``: what ``torch.cuda.is_bf16_supported`` says with / without emulation.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ))  # torchrun variables a test sets stay inside
        for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
            os.environ.pop(name, None)
        stack.enter_context(mock.patch("torch.cuda.is_available", return_value=cuda > 0))
        stack.enter_context(mock.patch("torch.cuda.device_count", return_value=cuda))
        stack.enter_context(mock.patch("torch.backends.mps.is_available", return_value=mps))
        stack.enter_context(mock.patch(
            "torch.cuda.is_bf16_supported", side_effect=lambda including_emulation=True: bf16 if including_emulation else native_bf16,
        ))  # fmt: skip
        yield


# --------------------------------------------------------------------------- --device
@pytest.mark.parametrize(
    "cuda, mps, wanted",
    [(0, False, CPU), (0, True, MPS), (2, True, CUDA), (1, False, CUDA)],
)  # fmt: skip
def test_auto_prefers_cuda_then_mps_then_cpu(cuda: int, mps: bool, wanted: torch.device) -> None:
    with machine(cuda=cuda, mps=mps):
        assert resolve_device("auto") == wanted
        assert resolve_device("cpu") == CPU


def test_auto_on_this_machine_is_cpu_here() -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert resolve_device("auto") == CPU


@pytest.mark.parametrize(
    "text, message",
    [
        ("cuda:x", "not a device"), ("gpu", "not a device"), ("CUDA", "not a device"), ("xpu", "unsupported device type 'xpu'"),
        ("meta", "unsupported device type 'meta'"), ("mps:1", "one MPS device"),
    ],
)  # fmt: skip
def test_malformed_devices_name_the_option(text: str, message: str) -> None:
    with machine(cuda=2, mps=True), pytest.raises(ConfigError, match=message) as err:
        resolve_device(text)
    assert str(err.value).startswith(f"--device {text!r}: ")
    with pytest.raises(ConfigError, match=r"training option device \(--device\) .*" + message):
        TrainConfig(device=text)


def test_unavailable_devices_are_refused() -> None:
    with machine(cuda=0, mps=False):
        with pytest.raises(ConfigError, match=r"--device 'mps': MPS is not available"):
            resolve_device("mps")
        with pytest.raises(ConfigError, match=r"--device 'cuda': CUDA is not available"):
            resolve_device("cuda")
    with machine(cuda=2):
        assert resolve_device("cuda:1") == torch.device("cuda", 1)
        with pytest.raises(ConfigError, match=r"'cuda:2': only 2 CUDA device\(s\) visible \(cuda:0..cuda:1\)"):
            resolve_device("cuda:2")
    assert parse_device("auto") is None and parse_device("cuda:3") == torch.device("cuda", 3)  # spelling only


def test_under_torchrun_cuda_is_the_local_rank_gpu() -> None:
    with machine(cuda=2, mps=True):
        os.environ.update(WORLD_SIZE="2", LOCAL_RANK="1", RANK="1")
        assert resolve_device("cuda") == torch.device("cuda", 1)
        assert resolve_device("auto") == torch.device("cuda", 1)
        assert resolve_device("cuda:1") == torch.device("cuda", 1)  # names this rank's GPU: respected
        with pytest.raises(ConfigError, match=r"'cuda:0': under torchrun each process uses the GPU of its LOCAL_RANK \(1"):
            resolve_device("cuda:0")
        with pytest.raises(ConfigError, match="torchrun needs cpu or cuda"):
            resolve_device("mps")
        assert resolve_device("cpu") == CPU
    with machine(cuda=1):
        os.environ.update(WORLD_SIZE="2", LOCAL_RANK="1", RANK="1")
        with pytest.raises(ConfigError, match=r"LOCAL_RANK 1 but only 1 CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("command", ["train", "eval", "predict", "bench", "demo"])
def test_device_help_shows_the_default(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "auto, cpu, cuda, cuda:N or mps (default auto: cuda if available, else mps, else cpu" in text
    if command == "train":
        assert "--accumulate N" in text and "(default 1)" in text
        assert "--amp [bf16|fp16]" in text and "Default off" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--model", "bicsnet_48_tiny", "--device", "cuda:x"], "bicsnet bench: error: --device 'cuda:x': not a device"),
        (["demo", "--device", "mps"], "bicsnet demo: error: --device 'mps': MPS is not available"),
        (["bench", "--model", "bicsnet_48_tiny", "--device", "cuda"], "bicsnet bench: error: --device 'cuda': CUDA is not"),
    ],
)  # fmt: skip
def test_cli_device_errors_exit_2(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with machine(cuda=0, mps=False):
        assert main([*argv, *(["--out", str(tmp_path / "demo")] if argv[0] == "demo" else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "demo").exists()  # nothing written before the device is checked


# --------------------------------------------------------------------------- --amp
def test_amp_rule() -> None:
    assert [resolve_amp(a, CPU) for a in ("off", "auto", "bf16", "fp16")] == ["off", "bf16", "bf16", "fp16"]
    with machine(cuda=1, bf16=True, native_bf16=True):  # A100, H100, RTX 30xx...
        assert [resolve_amp(a, CUDA) for a in ("auto", "bf16", "fp16")] == ["bf16", "bf16", "fp16"]
    with machine(cuda=1, bf16=True, native_bf16=False):  # T4, V100: bfloat16 only emulated
        assert [resolve_amp(a, CUDA) for a in ("auto", "bf16", "fp16")] == ["fp16", "bf16", "fp16"]
    with machine(cuda=1, bf16=False, native_bf16=False):
        assert resolve_amp("auto", CUDA) == "fp16"
        with pytest.raises(ConfigError, match="--amp bf16: this GPU .* cannot run bfloat16; use --amp fp16"):
            resolve_amp("bf16", CUDA)
    for amp in ("auto", "bf16", "fp16"):
        with pytest.raises(ConfigError, match=f"--amp {amp}: mixed precision on mps is not supported"):
            resolve_amp(amp, MPS)
    assert resolve_amp("off", MPS) == "off"
    with pytest.raises(ConfigError, match="training option amp='fp32': must be one of off, auto, bf16, fp16"):
        TrainConfig(amp="fp32")


def test_old_amp_settings_still_read(tmp_path: Path) -> None:
    # Before --amp took a precision: a boolean plus amp_dtype, which every resolved config.yaml spelled out.
    assert TrainConfig(amp=True).amp == "auto" and TrainConfig(amp=False).amp == "off"
    old = {"amp": True, "amp_dtype": "bfloat16", "epochs": 2}
    assert TrainConfig.from_dict(old).amp == "auto"
    assert TrainConfig.from_dict({**old, "amp_dtype": "float16"}).amp == "fp16"
    assert TrainConfig.from_dict({**old, "amp": False}).amp == "off"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "bicsnet_48_tiny"}, "train": old}))
    cfg = load_run_config(path)
    assert cfg.train == {"amp": "auto", "epochs": 2} and cfg.train_config({}).amp == "auto"
    assert RunConfig.from_dict(cfg.to_dict()).train == cfg.train  # and it writes back in today's terms


def _cls_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train", "--task", "classification", "--model", "bicsnet_48_tiny", "--img-size", "64",
        "--synth-dir", str(tmp_path / "synth"), "--synth-train", "8", "--synth-val", "4", "--synth-size", "64",
        "--out", str(tmp_path / "run"), *extra,
    ]  # fmt: skip


def test_print_config_records_amp_accumulate_and_device(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def printed(*extra: str) -> dict:
        assert main(_cls_args(tmp_path, *extra, "--print-config")) == 0
        out = capsys.readouterr().out
        return yaml.safe_load(out[out.index("recipe:"):])["train"]

    with machine(cuda=0, mps=False):
        default = printed()
        assert (default["amp"], default["accumulate"], default["device"]) == ("off", 1, "auto")
        bare = printed("--amp", "--accumulate", "3", "--device", "cpu")  # bare --amp on the CPU: bf16
        assert (bare["amp"], bare["accumulate"], bare["device"]) == ("bf16", 3, "cpu")
        assert printed("--amp", "fp16")["amp"] == "fp16"
        assert default["channels_last"] is False and printed("--channels-last")["channels_last"] is True
        nhwc = tmp_path / "nhwc.yaml"  # --no-channels-last undoes a --config's
        nhwc.write_text(yaml.safe_dump({"train": {"channels_last": True}}))
        assert printed("--config", str(nhwc))["channels_last"] is True
        assert printed("--config", str(nhwc), "--no-channels-last")["channels_last"] is False
        # An old run's config.yaml with amp: true means the same rule; --amp off overrides it.
        old = tmp_path / "old.yaml"
        old.write_text(yaml.safe_dump({"train": {"amp": True, "amp_dtype": "bfloat16"}}))
        assert printed("--config", str(old))["amp"] == "bf16"
        assert printed("--config", str(old), "--amp", "off")["amp"] == "off"
        assert printed("--set", "train.amp=true")["amp"] == "bf16"
    with machine(cuda=1, bf16=True, native_bf16=False):  # a T4: bare --amp is fp16, recorded as such
        assert printed("--amp", "--device", "cuda")["amp"] == "fp16"
    with machine(cuda=0, mps=True):
        assert main(_cls_args(tmp_path, "--amp", "--device", "mps", "--print-config")) == 2
    assert "bicsnet train: error: --amp auto: mixed precision on mps is not supported" in capsys.readouterr().err
    assert main(_cls_args(tmp_path, "--accumulate", "0", "--print-config")) == 2
    assert "training option accumulate=0: must be >= 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- training helpers
class Colours(Dataset):
    """Class = dominant channel of a noisy image; augmentation draws from torch's RNG; records what is read."""

    def __init__(self, n: int = 18, size: int = 8) -> None:
        g = torch.Generator().manual_seed(1234)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.base = torch.rand(n, 3, size, size, generator=g) * 0.3
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.seen.append(i)
        img = self.base[i].clone()
        img[int(self.labels[i])] += 0.7
        img = img + 0.05 * torch.rand_like(img)
        return (img.flip(-1) if torch.rand(()) < 0.5 else img), int(self.labels[i])


class GNNet(nn.Module):
    """Conv + GroupNorm + linear: each sample's output is independent of the batch, so its gradient is too."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(x).mean((2, 3)))
        self.dtypes.append(out.dtype)
        return out


class BNNet(nn.Module):
    """Conv + BN + dropout: buffers and model randomness, for exact resume."""

    def __init__(self, loud: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.drop, self.head, self.loud = nn.Dropout(0.2), nn.Linear(6, 3), loud

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x).mean((2, 3)))) * self.loud


class Elementwise(nn.Module):
    """Only ops autocast leaves in float32 (products, sums): fp16 changes nothing here but the loss scaling."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 9).view(3, 3))
        self.b = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean((2, 3)).unsqueeze(-1) * self.w).sum(1) + self.b


class Steps(HookBase):
    """Records, per optimiser step, the indices of the samples it read and the images it reports."""

    def __init__(self, data: Colours) -> None:
        self.data, self.samples, self.images = data, [], []

    def after_step(self, trainer) -> None:
        self.samples.append(sorted(self.data.seen))
        self.images.append(trainer.step_result.images)
        self.data.seen.clear()


def run(out: Path, model: nn.Module, data: Dataset | None = None, resume: bool = False, hooks=(), **options) -> Trainer:
    values = dict(
        epochs=3, batch_size=4, lr=0.2, warmup_steps=2, schedule="cosine", log_every=1, ckpt_every_steps=3,
        num_workers=0, device="cpu", deterministic=True, seed=7, out_dir=str(out), tensorboard=False,
    )  # fmt: skip
    values.update(options)
    trainer = Trainer(model, "classification", data if data is not None else Colours(), None, TrainConfig(**values),
                      meta={"model": "test", "task": "classification", "num_classes": 3}, resume=resume,
                      hooks=list(hooks))  # fmt: skip
    trainer.fit()
    return trainer


def log(path: Path) -> list[dict[str, str]]:
    with open(path / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path)[0]


# --------------------------------------------------------------------------- --amp in training
def test_bf16_autocasts_on_the_cpu_and_off_does_not(tmp_path: Path) -> None:
    dtypes = {}
    for amp in ("off", True, "bf16"):  # True: an old config's amp: true (auto -> bf16 on the CPU)
        torch.manual_seed(0)
        model = GNNet()
        trainer = run(tmp_path / str(amp), model, max_steps=2, amp=amp)
        dtypes[amp] = (trainer.config.amp, set(model.dtypes[:2]), trainer.scaler.is_enabled())
    assert dtypes == {
        "off": ("off", {torch.float32}, False), True: ("bf16", {torch.bfloat16}, False),
        "bf16": ("bf16", {torch.bfloat16}, False),
    }  # fmt: skip
    assert load_training_state(tmp_path / "True" / "checkpoints" / "last.state.pt")["config"]["amp"] == "bf16"


def test_fp16_unscales_before_clipping(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # With ops autocast keeps in float32 the fp16 run differs from float32 only by the loss scale
    # (2**16, exact); clipping scaled gradients would shrink every step by that factor.
    for amp in ("off", "fp16"):
        torch.manual_seed(0)
        trainer = run(tmp_path / amp, Elementwise(), amp=amp, grad_clip=0.01, accumulate=2, batch_size=2, lr=1.0)
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 2.0**16
    assert "warning: --amp fp16 on the CPU" in capsys.readouterr().out
    ref, fp16 = weights(tmp_path / "off" / "model.safetensors"), weights(tmp_path / "fp16" / "model.safetensors")
    start = Elementwise().state_dict()
    assert (ref["w"] - start["w"]).abs().max() > 1e-3  # clipped steps still move the weights
    for k in ref:
        torch.testing.assert_close(fp16[k], ref[k], rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- --accumulate
def test_accumulate_2_of_batch_2_equals_one_batch_of_4(tmp_path: Path) -> None:
    trainers, steps = {}, {}
    for name, batch, accumulate in (("batch4", 4, 1), ("batch2x2", 2, 2)):
        data = Colours(n=18)  # 18 // 4 = 4 steps an epoch; with batch 2: 9 batches, the 9th left out
        steps[name] = Steps(data)
        torch.manual_seed(0)
        trainers[name] = run(tmp_path / name, GNNet(), data, hooks=[steps[name]], batch_size=batch, accumulate=accumulate,
                             lr_reference_batch=8, warmup_steps=3)  # fmt: skip
    big, acc = trainers["batch4"], trainers["batch2x2"]
    # Exactly equal: steps, schedule, learning rate, and the samples each step reads.
    assert (acc.steps_per_epoch, acc.total_steps, acc.warmup_steps) == (big.steps_per_epoch, big.total_steps, 3) == (4, 12, 3)
    assert acc.lr == big.lr == 0.2 * (4 / 8)  # linear scaling by batch x accumulate x processes
    assert steps["batch2x2"].samples == steps["batch4"].samples
    assert all(len(set(s)) == 4 for s in steps["batch4"].samples) and steps["batch2x2"].images == [4] * 12
    log_big, log_acc = log(tmp_path / "batch4"), log(tmp_path / "batch2x2")
    assert [r["step"] for r in log_acc] == [str(i) for i in range(1, 13)]
    assert [r["lr"] for r in log_acc] == [r["lr"] for r in log_big] and float(log_acc[0]["lr"]) == 0.0
    # Equal up to float rounding: the gradient (a sum of two half-batch means, not one mean) and what follows.
    for a, b in zip(log_acc, log_big):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-6)
    w_big, w_acc = weights(tmp_path / "batch4" / "model.safetensors"), weights(tmp_path / "batch2x2" / "model.safetensors")
    assert max(float((w_big[k] - w_acc[k]).abs().max()) for k in w_big) < 1e-6
    assert float((w_big["head.weight"] - GNNet().state_dict()["head.weight"]).abs().max()) > 1e-2  # it did train


def test_max_steps_and_batch_checks_count_whole_steps(tmp_path: Path) -> None:
    trainer = run(tmp_path / "cap", GNNet(), Colours(n=18), batch_size=2, accumulate=3, max_steps=5)
    assert (trainer.steps_per_epoch, trainer.total_steps, trainer.step) == (3, 5, 5)  # 9 batches -> 3 steps
    assert len(log(tmp_path / "cap")) == 5
    with pytest.raises(ConfigError, match=r"batch_size=4 x accumulate=5 is larger than the 18 training images"):
        run(tmp_path / "big", GNNet(), Colours(n=18), accumulate=5)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")  # fp16's skipped steps
@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_resume_with_accumulate_gives_bitwise_identical_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amp: str) -> None:
    # fp16: a loud model overflows at the first scales, so the scaler's state (scale, growth tracker)
    # at the checkpoint differs from a fresh one's and must be restored.
    options = dict(ema_decay=0.9, grad_clip=5.0, batch_size=2, accumulate=2, amp=amp)
    loud = 100.0 if amp == "fp16" else 1.0
    torch.manual_seed(0)
    full = run(tmp_path / "full", BNNet(loud), **options)

    save = Trainer.save_checkpoint

    def save_then_die(self: Trainer) -> None:
        save(self)
        if self.step == 6:  # killed right after the mid-epoch-2 checkpoint
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", BNNet(loud), **options)
    monkeypatch.undo()
    state = load_training_state(RunCheckpointer(tmp_path / "cut" / "checkpoints").latest().state)
    assert state["step"] == 6 and state["sampler"]["accumulate"] == 2
    if amp == "fp16":
        assert state["scaler"]["scale"] < 2.0**16  # it backed off: a fresh scaler would differ
    torch.manual_seed(0)
    resumed = run(tmp_path / "cut", BNNet(loud), resume=True, **options)
    assert resumed.scaler.state_dict() == full.scaler.state_dict()

    for name in ("model.safetensors", "checkpoints/last.safetensors", "checkpoints/last_ema.safetensors"):
        a, b = weights(tmp_path / "full" / name), weights(tmp_path / "cut" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["loss"] for r in log(tmp_path / "cut")] == [r["loss"] for r in log(tmp_path / "full")]


def test_resume_refuses_another_global_batch(tmp_path: Path) -> None:
    trainer = Trainer(GNNet(), "classification", Colours(), None,
                      TrainConfig(batch_size=2, accumulate=2, device="cpu", out_dir=str(tmp_path), tensorboard=False,
                                  num_workers=0), meta={"num_classes": 3})  # fmt: skip
    trainer.save_checkpoint()
    with pytest.raises(ConfigError, match=r"global batch of 4 \(batch_size 2 x accumulate 2 x 1 process\(es\)\), this run has 2"):
        Trainer(GNNet(), "classification", Colours(), None,
                TrainConfig(batch_size=2, device="cpu", out_dir=str(tmp_path), tensorboard=False, num_workers=0),
                meta={"num_classes": 3}, resume=True)  # fmt: skip


def test_resume_refuses_an_optimizer_state_of_another_layout(tmp_path: Path) -> None:
    """A run whose optimizer state holds other parameters than the model (e.g. started while RetinaNet's
    subnets shared one norm layer across levels) fails with one error naming the state file."""
    cfg = dict(batch_size=2, device="cpu", out_dir=str(tmp_path), tensorboard=False, num_workers=0)
    Trainer(GNNet(), "classification", Colours(), None, TrainConfig(**cfg), meta={"num_classes": 3}).save_checkpoint()
    path = tmp_path / "checkpoints" / "last.state.pt"
    state = torch.load(path, weights_only=False)
    state["optimizer"]["param_groups"][0]["params"] = state["optimizer"]["param_groups"][0]["params"][:-1]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"last\.state\.pt: its optimizer state does not fit this model"):
        Trainer(GNNet(), "classification", Colours(), None, TrainConfig(**cfg), meta={"num_classes": 3}, resume=True)


# --------------------------------------------------------------------------- DDP
WORKER = textwrap.dedent(
    r'''
    import sys
    from pathlib import Path

    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    sys.path.insert(0, sys.argv[2])
    from test_device_amp import Colours, GNNet, run
    from bicsnet.engine.hooks import HookBase

    torch.set_num_threads(1)
    calls = []

    class CountAllReduce(HookBase):
        def before_train(self, trainer):
            def hook(state, bucket):
                calls.append(trainer.step)
                return allreduce_hook(state, bucket)
            trainer.ddp_model.register_comm_hook(None, hook)

    torch.manual_seed(0)
    t = run(Path(sys.argv[1]), GNNet(), Colours(n=16), hooks=[CountAllReduce()], batch_size=1, accumulate=2,
            epochs=2, ckpt_every_steps=0)
    # One gradient all-reduce per optimiser step (the model is one bucket): the first batch ran in no_sync().
    assert calls == list(range(t.total_steps)), calls
    print(f"rank {t.rank} steps {t.total_steps} ok")
    '''
)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_ddp_accumulate_matches_one_process_and_syncs_once_per_step(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path / "ddp"), str(Path(__file__).parent)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "rank 0 steps 8 ok" in proc.stdout and "rank 1 steps 8 ok" in proc.stdout
    torch.manual_seed(0)
    run(tmp_path / "single", GNNet(), Colours(n=16), batch_size=4, epochs=2, ckpt_every_steps=0)  # 2 x 1 x 2 = 4
    ddp, single = weights(tmp_path / "ddp" / "model.safetensors"), weights(tmp_path / "single" / "model.safetensors")
    assert max(float((ddp[k] - single[k]).abs().max()) for k in single) < 1e-6
