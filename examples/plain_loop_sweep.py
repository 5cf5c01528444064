"""The template to copy: your own PyTorch loop as a mup2 sweep (width × η × ρ × seed under μP²).

Swap in your model, data and loop; keep the three mup2 lines (``point.parametrize``,
``point.sam``, ``report.report``). Run ``python examples/plain_loop_sweep.py``, then
``mup2 report --storage sqlite:///runs/plain-loop.db --study plain-loop --out runs/plain-loop``.
"""

from __future__ import annotations

import torch
from torch import nn

import mup2.sweep
from mup2.data import synthetic_classification


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def objective(point: mup2.sweep.Point, report: mup2.sweep.Reporter) -> dict[str, float]:
    steps, batch = point.settings.get("epochs", 5), point.settings.get("batch", 64)
    data = synthetic_classification(train_size=1024, test_size=512, seed=0)  # your data here
    x, y = data.train.images, data.train.labels
    model = mlp(point.width)  # your model, at point.width ...
    with torch.device("meta"):
        base = mlp(64)  # ... and at the base width, where η and ρ are tuned
    p = point.parametrize(model, base)  # μP roles and init (from point.seed)
    sam = point.sam(model, p, momentum=0.9)  # SAM at point.lr, point.rho, μP² scaling
    for epoch in range(steps):
        order = torch.randperm(len(y))
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]

            def closure(idx: torch.Tensor = idx) -> torch.Tensor:
                sam.zero_grad()
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                return loss

            sam.step(closure)
        with torch.no_grad():
            logits = model(data.test.images)
        accuracy = float((logits.argmax(1) == data.test.labels).float().mean())
        report.report(accuracy, epoch)  # the curve; NaN here marks the run unstable
    loss = float(nn.functional.cross_entropy(logits, data.test.labels))
    return {"accuracy": accuracy, "loss": loss}


if __name__ == "__main__":
    mup2.sweep.run(
        objective,
        name="plain-loop",
        storage="sqlite:///runs/plain-loop.db",
        grid={
            "parametrizations": ["mup2"],
            "widths": [64, 256],
            "lr": [0.03, 0.1, 0.3],
            "rho": [0.0, 0.1],
            "seeds": [0],
        },
        metric="accuracy",
        direction="maximize",
        version="mlp-synthetic-1",
        mkdir=True,  # runs/ may not exist yet
        settings={"epochs": 5},
    )
