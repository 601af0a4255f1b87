"""``bicsnet demo``'s precision choice: bf16 autocast only on CPUs with bfloat16 matrix units, recorded in its output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bicsnet.cli import demo_cmd
from bicsnet.cli.main import main
from bicsnet.engine.trainer import cpu_bf16_units
from bicsnet.errors import ConfigError

# /proc/cpuinfo excerpts: an AVX2-only AMD EPYC (this project's 2-core VM), a Sapphire Rapids Xeon, a Zen 4 EPYC.
AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN4 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"


@pytest.mark.parametrize(
    ("cpuinfo", "units"),
    [(AVX2, []), (SAPPHIRE_RAPIDS, ["amx_bf16", "avx512_bf16"]), (ZEN4, ["avx512_bf16"]), ("", []),
     # a flag name inside another word or outside the flags line does not count
     ("model name\t: amx_bf16 lookalike\nflags\t\t: avx2 xamx_bf16\n", [])],
)  # fmt: skip
def test_cpu_bf16_units_reads_the_flags_line(cpuinfo: str, units: list[str]) -> None:
    assert cpu_bf16_units(cpuinfo) == units


def test_cpu_bf16_units_of_this_machine_is_a_subset_of_its_flags() -> None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        assert cpu_bf16_units() == []
        return
    assert cpu_bf16_units() == cpu_bf16_units(text)


@pytest.mark.parametrize(
    ("choice", "device", "cpuinfo", "amp"),
    [("auto", "cpu", AVX2, "off"), ("auto", "cpu", SAPPHIRE_RAPIDS, "bf16"), ("auto", "cpu", ZEN4, "bf16"),
     ("auto", "cuda", SAPPHIRE_RAPIDS, "off"),  # the GPU preset was measured in float32
     ("fp32", "cpu", SAPPHIRE_RAPIDS, "off"), ("bf16", "cpu", AVX2, "bf16")],
)  # fmt: skip
def test_demo_precision(choice: str, device: str, cpuinfo: str, amp: str) -> None:
    assert demo_cmd.demo_precision(choice, torch.device(device), cpuinfo) == amp


def test_demo_precision_rejects_unknown_choice() -> None:
    with pytest.raises(ConfigError, match="--precision 'fp16'"):
        demo_cmd.demo_precision("fp16", torch.device("cpu"), AVX2)


@pytest.mark.parametrize(
    ("device", "amp", "name"),
    [("cpu", "off", "cpu"), ("cpu", "bf16", "cpu-bf16"), ("cuda", "off", "cuda"), ("cuda", "bf16", "cuda"),
     ("mps", "bf16", "cpu")],
)  # fmt: skip
def test_demo_preset_name(device: str, amp: str, name: str) -> None:
    assert demo_cmd.demo_preset_name(torch.device(device), amp) == name


def test_cpu_presets_differ_only_in_layout_and_length() -> None:
    """The bf16 preset is the float32 one trained channels-last for more epochs (benchmarks/demo.md: why)."""
    fp32, bf16 = demo_cmd.DEMO_PRESETS["cpu"], demo_cmd.DEMO_PRESETS["cpu-bf16"]
    assert {k for k in fp32 if fp32[k] != bf16[k]} == {"epochs", "channels_last"}
    assert fp32["channels_last"] is False and bf16["channels_last"] is True
    assert bf16["epochs"] > fp32["epochs"]


def _tiny_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cpu", "cpu-bf16"):
        tiny = {**demo_cmd.DEMO_PRESETS[name], "img_size": 64, "epochs": 1, "synth_train": 8, "synth_val": 2}
        monkeypatch.setitem(demo_cmd.DEMO_PRESETS, name, tiny)


def test_demo_records_its_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``--precision bf16`` trains under bf16 autocast, channels-last, and says so in demo.json, config.json and its last line.

    (``auto`` is what tests/test_cli.py's demo test runs here.)
    """
    _tiny_presets(monkeypatch)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--workers", "0", "--precision", "bf16"]) == 0
    demo = json.loads((out / "demo.json").read_text())
    assert demo["precision"] == "bf16 autocast"
    assert demo["preset"] == demo_cmd.DEMO_PRESETS["cpu-bf16"]
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["amp"] == "bf16"
    assert train["channels_last"] is True and train["epochs"] == demo_cmd.DEMO_PRESETS["cpu-bf16"]["epochs"]
    assert "on cpu (bf16 autocast)" in capsys.readouterr().out
    # --no-channels-last overrides the preset.
    assert main(["demo", "--out", str(out), "--device", "cpu", "--workers", "0", "--overwrite",
                 "--precision", "bf16", "--no-channels-last"]) == 0  # fmt: skip
    assert json.loads((out / "config.json").read_text())["train"]["channels_last"] is False


def test_demo_in_float32_trains_nchw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--precision fp32`` takes the float32 preset: NCHW, its own epochs; ``--channels-last`` overrides the layout."""
    _tiny_presets(monkeypatch)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--workers", "0", "--precision", "fp32"]) == 0
    demo = json.loads((out / "demo.json").read_text())
    assert demo["precision"] == "float32" and demo["preset"] == demo_cmd.DEMO_PRESETS["cpu"]
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["amp"] == "off" and train["channels_last"] is False
    assert main(["demo", "--out", str(out), "--device", "cpu", "--workers", "0", "--overwrite",
                 "--precision", "fp32", "--channels-last"]) == 0  # fmt: skip
    assert json.loads((out / "config.json").read_text())["train"]["channels_last"] is True
