"""SAMTrainer: a tiny model trains a few steps under transformers.Trainer with gradient
accumulation, equals mup2's own accumulated SAM loop, and resumes from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mup2

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from mup2.integrations.hf import SAMTrainer  # noqa: E402

ROWS, BATCH, ACCUM, STEPS = 64, 4, 2, 4


class Tiny(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 3))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def _data() -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, 5, generator=g)
    y = torch.randint(0, 3, (ROWS,), generator=g)
    return [{"x": x[i], "labels": y[i]} for i in range(ROWS)]


def _parametrization(model: nn.Module) -> mup2.Parametrization:
    with torch.device("meta"):
        base = Tiny(8)
    return mup2.Parametrization.infer(model, base, "mup-sgd")


SAM_KW: dict[str, Any] = {"base_optimizer": torch.optim.SGD, "rho": 0.1, "momentum": 0.9}


def _trainer(out: Path, steps: int, cheap: dict[str, Any]) -> tuple[SAMTrainer, nn.Module]:
    model = Tiny()
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        save_steps=2,
        save_strategy="steps",
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        max_grad_norm=0.0,
        disable_tqdm=True,
    )
    trainer = SAMTrainer(
        model=model,
        args=args,
        train_dataset=_data(),
        parametrization=_parametrization(model),
        sam_kwargs=SAM_KW | cheap,
    )
    return trainer, model


def _by_hand(cheap: dict[str, Any]) -> list[Tensor]:
    model = Tiny()
    opt = mup2.SAM(_parametrization(model).param_groups(model, lr=0.05), **SAM_KW, **cheap)
    data = _data()
    for step in range(STEPS):
        rows = data[step * BATCH * ACCUM : (step + 1) * BATCH * ACCUM]
        micro = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]

        def loss_fn(b: list[dict[str, Tensor]]) -> Tensor:
            x = torch.stack([r["x"] for r in b])
            return model(x, torch.stack([r["labels"] for r in b]))["loss"]

        opt.step_accumulate(loss_fn, micro)
    return [q.detach() for q in model.parameters()]


#: SAM on every step; SAM every 3rd step with LookSAM's steps between (the checkpoint after step
#: 2 is mid-cycle: the Trainer takes one pass on the steps between).
CHEAP = [{}, {"every": 3, "between": "looksam"}]


@pytest.mark.parametrize("cheap", CHEAP, ids=["sam", "looksam"])
def test_sam_trainer_matches_accumulated_sam_and_resumes(
    cheap: dict[str, Any], tmp_path: Path
) -> None:
    trainer, model = _trainer(tmp_path / "a", STEPS, cheap)
    trainer.train()
    assert isinstance(trainer.sam, mup2.SAM)
    full = [q.detach().clone() for q in model.parameters()]
    for a, b in zip(full, _by_hand(cheap)):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), float((a - b).abs().max())
    resumed, model2 = _trainer(tmp_path / "a", STEPS, cheap)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for a, b in zip(full, model2.parameters()):
        assert torch.equal(a, b.detach())
