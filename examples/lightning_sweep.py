"""A small ConvNet on Fashion-MNIST in Lightning, SAM's two passes through mup2's ``sam_step``,
as a sweep of (width × η × ρ × seed) under μP².

Width is the number of channels of both convolutions (base width 16). Lightning's automatic
optimization runs one backward per step, so the module sets ``automatic_optimization = False``
and calls :func:`mup2.integrations.lightning.sam_step` in ``training_step``; its optimizer is
``point.sam(...)``. The metric is the test accuracy after the last epoch (maximized); each
epoch's is reported as the run's curve.

Data: Fashion-MNIST from ``mup2.data.load_fashion_mnist`` (``apt-get install
dataset-fashion-mnist`` or ``$MUP2_FASHION_MNIST_DIR``), the first ``train_size``/``test_size``
examples; ``settings.data = "synthetic"`` trains on a seeded Gaussian mixture of the same shape
instead (no download; the test uses it).

Run: ``python examples/lightning_sweep.py`` (writes ``runs/lightning.db``), then ``mup2 report
--storage sqlite:///runs/lightning.db --study lightning-convnet --out runs/lightning``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import mup2.sweep
from mup2.data import DataSplits, load_fashion_mnist, normalize, synthetic_classification
from mup2.data.dataset import to_unit
from mup2.integrations.lightning import sam_step

__all__ = ["SETTINGS", "ConvNet", "Module", "objective"]

#: The sweep's settings (``point.settings``); a test shrinks them.
SETTINGS: dict[str, Any] = {
    "data": "fashion-mnist",  # or "synthetic"
    "train_size": 10000,
    "test_size": 2000,
    "epochs": 3,
    "batch": 128,
    "base_width": 16,
}


class ConvNet(nn.Module):
    """``(B, 1, 28, 28)`` → logits ``(B, 10)``: two 3x3 convolutions of ``width`` channels,
    each followed by ReLU and 2x2 max-pooling, and a linear readout of the ``width x 7 x 7``
    features."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.readout = nn.Linear(width * 7 * 7, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x))


class Module(L.LightningModule):  # type: ignore[misc]
    """The ConvNet trained with SAM under manual optimization; reports each epoch's accuracy."""

    def __init__(
        self, point: mup2.sweep.Point, report: mup2.sweep.Reporter, test: tuple[Tensor, Tensor]
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.point, self.reporter, self.test = point, report, test
        self.net = ConvNet(point.width)
        with torch.device("meta"):
            base = ConvNet({**SETTINGS, **point.settings}["base_width"])
        self.parametrization = point.parametrize(self.net, base)  # μP roles, init from seed
        self.accuracy = float("nan")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return sam_step(self, lambda: nn.functional.cross_entropy(self.net(x), y))

    def on_train_epoch_end(self) -> None:
        with torch.no_grad():
            logits = self.net(self.test[0])
        self.accuracy = float((logits.argmax(1) == self.test[1]).float().mean())
        self.reporter.report(self.accuracy, self.current_epoch)

    def configure_optimizers(self) -> mup2.SAM:
        return self.point.sam(self.net, self.parametrization, momentum=0.9)


def _data(s: dict[str, Any]) -> DataSplits:
    if s["data"] == "synthetic":
        return synthetic_classification(s["train_size"], s["test_size"], shape=(1, 28, 28))
    return load_fashion_mnist().head(s["train_size"], s["test_size"])


def objective(point: mup2.sweep.Point, report: mup2.sweep.Reporter) -> float:
    """Train one grid point; return the final test accuracy."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per run
    s = {**SETTINGS, **point.settings}
    data = _data(s)
    x, xt = (normalize(to_unit(d.images), data.mean, data.std) for d in (data.train, data.test))
    loader = DataLoader(
        TensorDataset(x, data.train.labels),
        batch_size=s["batch"],
        shuffle=True,
        generator=torch.Generator().manual_seed(point.seed),
    )
    module = Module(point, report, (xt, data.test.labels))
    trainer = L.Trainer(
        max_epochs=s["epochs"],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return module.accuracy


if __name__ == "__main__":
    mup2.sweep.run(
        objective,
        name="lightning-convnet",
        storage="sqlite:///runs/lightning.db",
        grid={
            "parametrizations": ["mup2"],
            "widths": [16, 64],
            "lr": [0.03, 0.1, 0.3],
            "rho": [0.0, 0.1],
            "seeds": [0],
        },
        metric="accuracy",
        direction="maximize",
        version="convnet-fmnist-1",
        mkdir=True,  # runs/ may not exist yet
    )
