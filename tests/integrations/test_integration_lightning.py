"""sam_step in a LightningModule under manual optimization: a tiny model trains a few steps,
equals mup2's own SAM loop, and resumes from a checkpoint bit for bit; also under 2-process
DDP (gloo, ddp_spawn) on CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import mup2

L = pytest.importorskip("lightning")
from mup2.integrations.lightning import sam_step  # noqa: E402

ROWS, BATCH, STEPS = 16, 8, 4  # two steps an epoch: the checkpoint at step 2 ends an epoch


def _net(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 3))


def _groups(net: nn.Module) -> list[dict[str, Any]]:
    with torch.device("meta"):
        base = _net(8)
    return mup2.Parametrization.infer(net, base, "mup-sgd").param_groups(net, lr=0.05)


class Module(L.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = _net()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return sam_step(self, lambda: nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> mup2.SAM:
        return mup2.SAM(_groups(self.net), torch.optim.SGD, rho=0.1, momentum=0.9)


def _loader() -> DataLoader[tuple[Tensor, ...]]:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(ROWS, 5, generator=g), torch.randint(0, 3, (ROWS,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def _fit(root: Path, steps: int, ckpt: str | None = None, **kw: Any) -> Module:
    module = Module()
    every = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root, every_n_train_steps=2, save_top_k=-1, filename="{step}"
    )
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[every],
        deterministic=True,
        **kw,
    )
    trainer.fit(module, _loader(), ckpt_path=ckpt)
    return module


def _by_hand(steps: int) -> list[Tensor]:
    net = _net()
    opt = mup2.SAM(_groups(net), torch.optim.SGD, rho=0.1, momentum=0.9)
    batches = [b for _ in range(steps) for b in _loader()]
    for x, y in batches[:steps]:

        def closure(x: Tensor = x, y: Tensor = y) -> Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return [q.detach() for q in net.parameters()]


def test_lightning_sam_step_trains_matches_and_resumes(tmp_path: Path) -> None:
    full = [q.detach().clone() for q in _fit(tmp_path, STEPS, devices=1).parameters()]
    for a, b in zip(full, _by_hand(STEPS)):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), float((a - b).abs().max())
    resumed = _fit(tmp_path / "r", STEPS, str(tmp_path / "step=2.ckpt"), devices=1)
    for a, b in zip(full, resumed.parameters()):
        assert torch.equal(a, b.detach())


@pytest.mark.slow
def test_lightning_sam_step_under_ddp_resumes(tmp_path: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    ddp: dict[str, Any] = {"devices": 2, "strategy": "ddp_spawn"}
    full = [q.detach().clone() for q in _fit(tmp_path, STEPS, **ddp).parameters()]
    moved = max(float((a - b.detach()).abs().max()) for a, b in zip(full, _net().parameters()))
    assert moved > 1e-3
    resumed = _fit(tmp_path / "r", STEPS, str(tmp_path / "step=2.ckpt"), **ddp)
    for a, b in zip(full, resumed.parameters()):
        assert torch.equal(a, b.detach())
