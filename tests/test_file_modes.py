"""Files bicsnet writes get the mode the umask asks for (0644 under 022), not mkstemp's 0600.

The umasks are set in a child process (the test process's umask is never
touched), which runs the CLI as a user does, once per umask: a 2-step
training run on generated synthetic data, then eval and predict; under 027
also an ONNX export (once: the exporter takes tens of seconds). Every file
and folder under the outputs is then checked. 027 tells apart both failure
modes: mkstemp's private 0600 and a hard-coded 0644.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bicsnet import io as bio

UMASKS = (0o022, 0o027, 0o077)
EXPORT_UMASK = 0o027

_CHILD = r"""
import os
import sys
from pathlib import Path
from bicsnet.cli.main import main


def run(*argv):
    code = main(list(argv))
    if code != 0:
        sys.exit(f"bicsnet {argv[0]} exited {code}")


for mask in map(int, sys.argv[2:]):
    os.umask(mask)
    root = Path(sys.argv[1]) / oct(mask)
    out, data = root / "run", root / "data"
    run("train", "--task", "classification", "--model", "bicsnet_48_tiny", "--img-size", "64",
        "--synth-dir", str(data), "--synth-train", "6", "--synth-val", "3", "--synth-size", "64",
        "--max-steps", "2", "--batch-size", "3", "--workers", "0", "--device", "cpu",
        "--set", "train.ckpt_every_steps=1", "--out", str(out))
    run("eval", "--checkpoint", str(out), "--workers", "0", "--device", "cpu", "--out", str(root / "eval"))
    image = sorted((data / "folder" / "val").rglob("*.png"))[0]
    run("predict", "--checkpoint", str(out), str(image), "--device", "cpu", "--out", str(root / "pred"))
    if mask == EXPORT_UMASK:
        # The exporter's own writes (graph + metadata) through the library call 'bicsnet export' makes;
        # a torchvision ResNet exports in a fraction of the time of BiCSNet's many-branched graph.
        import bicsnet
        from bicsnet.tools.export import export_onnx

        model = bicsnet.create_model("resnet34", task="classification", num_classes=6)
        export_onnx(model, "classification", root / "export" / "model.onnx", 64)
"""


def _modes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Permission bits of every file and every folder below ``root``, by relative path."""
    files, dirs = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath, name)
            dirs[p.relative_to(root).as_posix()] = stat.S_IMODE(p.lstat().st_mode)
        for name in filenames:
            p = Path(dirpath, name)
            files[p.relative_to(root).as_posix()] = stat.S_IMODE(p.lstat().st_mode)
    return files, dirs


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("modes")
    before = bio.current_umask()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    code = _CHILD.replace("EXPORT_UMASK", str(EXPORT_UMASK))
    proc = subprocess.run([sys.executable, "-c", code, str(root), *map(str, UMASKS)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert bio.current_umask() == before  # the umask changed in the child only
    return root


@pytest.mark.parametrize("umask", UMASKS, ids=[f"umask{m:03o}" for m in UMASKS])
def test_every_output_file_follows_the_umask(outputs: Path, umask: int) -> None:
    files, dirs = _modes(outputs / oct(umask))
    # What the commands write, so that a writer bypassing bicsnet.io cannot hide by not running.
    expected = ["run/model.safetensors", "run/metrics.json", "run/config.yaml", "run/config.json", "run/log.csv",
                "run/eval_log.jsonl", "run/loss_curve.png", "run/checkpoints/last.state.pt",
                "run/checkpoints/last.safetensors", "eval/metrics.json", "data/synth.json"]  # fmt: skip
    if umask == EXPORT_UMASK:
        expected.append("export/model.onnx")
    missing = [f for f in expected if f not in files]
    assert not missing, f"missing {missing}; written: {sorted(files)}"
    assert any(f.startswith("pred/") and f.endswith(".json") for f in files), sorted(files)
    assert not [f for f in files if Path(f).name.startswith(".")], "temporary files left behind"
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    wrong = {f: oct(m) for f, m in files.items() if m != want_file}
    assert not wrong, f"files not {oct(want_file)} under umask {oct(umask)}: {wrong}"
    wrong = {d: oct(m) for d, m in dirs.items() if m != want_dir}
    assert not wrong, f"folders not {oct(want_dir)} under umask {oct(umask)}: {wrong}"


def test_umask_read_from_proc_and_from_os_agree() -> None:
    # The /proc reader is what Linux uses; the os.umask fallback (other systems) must give the same value
    # and leave the mask as it was.
    before = bio._umask_from_os()
    assert bio.current_umask() == before == bio._umask_from_os()
    if bio._umask_from_proc() is not None:
        assert bio._umask_from_proc() == before


def test_fallback_read_is_safe_under_threads(tmp_path: Path) -> None:
    # Reading via os.umask briefly sets 077: a file made meanwhile may be more private, never more open.
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            bio._umask_from_os()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            (tmp_path / f"f{i}").write_text("x")
    finally:
        done.set()
        t.join()
    normal = 0o666 & ~bio.current_umask()
    for i in range(200):
        mode = stat.S_IMODE((tmp_path / f"f{i}").stat().st_mode)
        assert mode in (normal, normal & 0o600), oct(mode)


def test_sidecar_files_are_published_with_the_target(tmp_path: Path) -> None:
    """atomic_save_files: a writer's sidecar (ONNX external weights) keeps the name the target refers to."""
    out = tmp_path / "m.onnx"

    def write(path: str) -> None:
        assert Path(path).name == "m.onnx"  # staged under its final name
        Path(path).write_text("graph")
        Path(path + ".data").write_text("weights")

    published = bio.atomic_save_files(out, write)
    assert published == [tmp_path / "m.onnx.data", out]
    assert out.read_text() == "graph" and (tmp_path / "m.onnx.data").read_text() == "weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]  # staging folder removed

    def fail(path: str) -> None:
        Path(path).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        bio.atomic_save_files(out, fail)
    assert out.read_text() == "graph"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
