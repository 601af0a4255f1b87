"""Two-process (torchrun, Gloo, CPU) tests of sampler sharding, SyncBN and DDP training parity."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bicsnet.engine.checkpoint import load_model

WORKER = textwrap.dedent(
    r'''
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch import nn

    from bicsnet.engine.distributed import (
        CPUSyncBatchNorm, ResumableDistributedSampler, all_gather_objects, get_rank, get_world_size,
        init_distributed, wrap_ddp,
    )

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    device = init_distributed("cpu")
    rank, world = get_rank(), get_world_size()
    assert world == 2 and dist.get_backend() == "gloo"

    # Sharding: the ranks' shards interleave into the one global order of the epoch.
    sampler = ResumableDistributedSampler(11, seed=4)
    sampler.set_epoch(3)
    shards = all_gather_objects(list(sampler))
    order = sampler.global_order()
    assert [i for pair in zip(*shards) for i in pair] == order, (shards, order)
    assert len(set(order)) == 11 and len(order) == 12  # padded with one repeat
    sampler.set_start_index(2)
    assert list(sampler) == shards[rank][2:]
    evals = all_gather_objects(list(ResumableDistributedSampler(11, shuffle=False, pad=False)))
    assert sorted(evals[0] + evals[1]) == list(range(11))  # evaluation: every sample exactly once

    # SyncBN + DDP on two halves == BatchNorm on the whole batch in one process.
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))

    ref, ddp = make(), wrap_ddp(make(), device)
    assert sum(isinstance(m, CPUSyncBatchNorm) for m in ddp.modules()) == 2
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(6, 3, 7, 7, generator=g) * (step + 1) + step
        target = torch.randn(6, 2, 5, 5, generator=g)
        y_ref = ref(x)
        ((y_ref - target) ** 2).mean().backward()
        local = slice(rank * 3, rank * 3 + 3)
        y = ddp(x[local])
        ((y - target[local]) ** 2).mean().backward()
        assert torch.allclose(y, y_ref[local], atol=1e-5), (step, (y - y_ref[local]).abs().max())
        for (name, p_ref), p in zip(ref.named_parameters(), ddp.module.parameters()):
            assert torch.allclose(p.grad, p_ref.grad, atol=1e-5), (step, name, (p.grad - p_ref.grad).abs().max())
        opt_ref.step(), opt_ddp.step(), opt_ref.zero_grad(), opt_ddp.zero_grad()
    for (name, b_ref), b in zip(ref.named_buffers(), ddp.module.buffers()):
        assert torch.allclose(b.float(), b_ref.float(), atol=1e-5), (name, b, b_ref)

    # The real Trainer on 2 processes x 2 images (the test compares with 1 process x 4 images).
    sys.path.insert(0, sys.argv[2])
    from test_distributed import run_training

    run_training(out / "ddp", batch_size=2)
    dist.destroy_process_group()
    print(f"rank {rank} ok")
    '''
)


def run_training(out_dir: Path, batch_size: int) -> None:
    """Train a dropout-free conv classifier; same global batches for 1x4 and 2x2 processes."""
    from torch import nn
    from torch.utils.data import TensorDataset

    from bicsnet.engine.trainer import TrainConfig, Trainer

    g = torch.Generator().manual_seed(3)
    images, labels = torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 3),
    )  # fmt: skip
    cfg = TrainConfig(
        epochs=2, batch_size=batch_size, lr=0.3, warmup_steps=1, schedule="cosine", log_every=2, ckpt_every_steps=0,
        eval_every_epochs=1, num_workers=0, device="cpu", seed=5, out_dir=str(out_dir), tensorboard=False,
    )  # fmt: skip
    # 11 validation images: uneven shards (6 + 5), each evaluated exactly once.
    val = TensorDataset(images[:11] + 0.1, labels[:11])
    Trainer(model, "classification", TensorDataset(images, labels), val, cfg, meta={"m": 1}).fit()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_process_sampler_syncbn_and_training_parity(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path), str(Path(__file__).parent)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "rank 0 ok" in proc.stdout and "rank 1 ok" in proc.stdout

    run_training(tmp_path / "single", batch_size=4)
    ddp, _ = load_model(tmp_path / "ddp" / "model.safetensors")
    single, _ = load_model(tmp_path / "single" / "model.safetensors")
    assert ddp.keys() == single.keys()
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("ddp", "single")]
    assert metrics[0] == metrics[1] and set(metrics[0]) == {"top1", "top5"}
    for k in single:
        assert torch.allclose(ddp[k].float(), single[k].float(), atol=1e-5), (k, ddp[k], single[k])
