"""DistributedDataParallel around the *user's* model, with the wrapper as one of its attributes.

Two CPU processes (gloo) each hold a detector: a tiny open_clip model, the detector's own
`fc`, and `self.dgs = DGSWrapper(...)`. The detector's forward runs the DGS step. With
`DDP(detector)` the gradients of every part the step trains (LoRA, `fc`, the wrapper's text
head) are all-reduced, and equal those of one process on the whole batch
(`align_scale="invariant"`, float64).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch.distributed with the gloo backend is not available",
    ),
    pytest.mark.usefixtures("one_thread"),
]


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from dgsnet import DGSConfig, DGSWrapper
        from tests.helpers import open_clip_tokenizer, tiny_open_clip

        self.clip = tiny_open_clip().double()
        self.fc = nn.Linear(16, 1).double()
        config = DGSConfig(lora_dropout=0.0, align_scale="invariant")
        self.dgs = DGSWrapper(self.clip, open_clip_tokenizer(), config, image_head=self.fc)
        with torch.no_grad():  # non-zero LoRA B and heads, the same on every rank
            g = torch.Generator().manual_seed(1)
            for _, p in self.dgs.named_trainable_parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
            self.dgs.teacher_head.weight.copy_(torch.randn(1, 16, generator=g) * 0.5)

    def forward(self, x: torch.Tensor, captions: list[str], y: torch.Tensor) -> torch.Tensor:
        return self.dgs(x, captions, y).loss


def trained_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from tests.helpers import batch

        x, caps, y = batch(dtype=torch.float64)
        ddp = nn.parallel.DistributedDataParallel(Detector())
        part = slice(rank * 3, rank * 3 + 3)
        ddp(x[part], caps[part], y[part]).backward()
        torch.save(trained_grads(ddp.module), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_of_the_users_model_all_reduces_every_part_the_step_trains(tmp_path):
    from tests.helpers import batch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = Detector()
    x, caps, y = batch(dtype=torch.float64)
    single(x, caps, y).backward()
    expected = trained_grads(single)
    assert any("lora_" in n for n in expected) and "fc.weight" in expected
    assert "dgs.text_head.weight" in expected
    for grads in ranks:
        assert grads.keys() == expected.keys()
        for n in expected:
            torch.testing.assert_close(grads[n], expected[n], rtol=1e-10, atol=1e-13, msg=n)
