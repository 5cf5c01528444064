"""Train ``K`` configurations as one stacked model: the semantics of ``K`` :func:`mup2.train` runs.

One step, for all configurations at once: the loss at ``w`` on each configuration's own batch
(its seed's data order), the gradient, the SAM perturbation of each configuration from the
functional core (:func:`mup2.optim.perturb.perturbation_direction` with a configuration axis),
the gradient at ``w + eps`` (computed from new tensors, ``w`` itself is never moved), then SGD
with each configuration's learning rates (:func:`mup2.batched.sgd.sgd_step_`). A configuration
with ``rho = 0`` gets ``eps = 0``, so its second gradient is its first.

A configuration whose training loss turns non-finite is recorded unstable at that
``(epoch, step)`` exactly as :func:`mup2.train` records it, keeping the metrics of its last
finite epoch. Nothing mixes the slices of different configurations, so the others are
unaffected; at the end of that epoch it is frozen (weights, momenta and learning rates set to
0). Each configuration's ``seconds`` is the bundle's time divided by ``K``. The host
synchronises once per epoch (metrics and divergence are kept on the device).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import torch
from torch import Tensor

from mup2.batched.bundle import check_batchable
from mup2.batched.sgd import sgd_step_
from mup2.batched.stack import StackedModel, build_stack
from mup2.config import TrainConfig
from mup2.data import DataSplits, normalize
from mup2.data.dataset import to_unit
from mup2.errors import check_instance, check_iterable
from mup2.losses import mean_loss, sum_loss
from mup2.optim.perturb import per_tensor, perturbation_direction
from mup2.precision import at_least_fp32, autocast
from mup2.train import (
    EpochMetrics,
    RunResult,
    build_scheduler,
    prepare_data,
    resolve_device,
    train_loader,
)

__all__ = ["BatchedRun", "schedule_factors", "train_batched"]


def schedule_factors(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The factor of the base LR at each step (step ``t`` uses ``factors[t]``; one extra entry,
    the factor after the last step), from the same torch schedulers :func:`mup2.train` uses."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = build_scheduler(probe, config.schedule, config.epochs, steps_per_epoch, 1.0)
    out = []
    for _ in range(config.epochs * steps_per_epoch):
        out.append(float(probe.param_groups[0]["lr"]))
        probe.step()
        sched.step()
    out.append(float(probe.param_groups[0]["lr"]))
    return out


def train_batched(
    configs: Sequence[TrainConfig],
    *,
    data: DataSplits | None = None,
    on_epoch: Callable[[int], object] | None = None,
) -> list[RunResult]:
    """Train ``configs`` (one bundle, :func:`mup2.batched.check_batchable`) together; one
    :class:`~mup2.train.RunResult` per config, in order, as :func:`mup2.train` would return it.

    ``data``: an already loaded dataset (as for :func:`mup2.train`). ``on_epoch(epoch)`` runs
    after every epoch; an exception it raises stops the bundle and propagates. Writes nothing:
    a bundle that stops early is rerun from the start. Torch's global RNG is left as it was."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        return BatchedRun(configs, data=data).run(on_epoch)


def _configs(configs: object) -> list[TrainConfig]:
    """``configs`` as a list of :class:`TrainConfig`; a clear error for anything else."""
    if isinstance(configs, TrainConfig):
        raise TypeError(
            "configs must be a sequence of TrainConfig, got one TrainConfig; pass [config], "
            "or train one run with mup2.train"
        )
    check_instance("configs", configs, Iterable, "a sequence of TrainConfig")
    out = list(check_iterable("configs", cast(Iterable[TrainConfig], configs)))
    for i, config in enumerate(out):
        check_instance(
            f"configs[{i}]", config, TrainConfig, "a TrainConfig (mup2.config.parse_config(...))"
        )
    return out


class BatchedRun:
    """The state of one bundle: the stacked model, the data on the device, the schedule.

    :meth:`run` trains it; :meth:`state_dicts` gives each configuration's weights afterwards
    (to save a model, or to compare with a separate run)."""

    def __init__(self, configs: Sequence[TrainConfig], *, data: DataSplits | None = None):
        configs = _configs(configs)
        check_batchable(configs)
        self.cfgs, self.cfg = list(configs), configs[0]
        self.device = dev = resolve_device(self.cfg.device)
        splits = prepare_data(self.cfg, data)
        self.model: StackedModel = build_stack(configs, splits.input_shape, splits.num_classes, dev)
        self.loaders = [train_loader(c, splits) for c in configs]  # their orders
        self.x_train = normalize(to_unit(splits.train.images), splits.mean, splits.std).to(dev)
        self.y_train = splits.train.labels.to(dev)
        self.x_test = normalize(to_unit(splits.test.images), splits.mean, splits.std).to(dev)
        self.y_test = splits.test.labels.to(dev)
        self.steps = len(self.loaders[0])
        self.factors = schedule_factors(self.cfg, self.steps)
        m = self.model
        self.lr = per_tensor(m.lr, m.params)
        self.wd = per_tensor(m.weight_decay, m.params) if bool(m.weight_decay.any()) else None
        self.momenta: list[Tensor | None] = [None] * len(m.params)
        self.perturbed = [m.params[i] for i in m.perturb.index]

    def run(self, on_epoch: Callable[[int], object] | None) -> list[RunResult]:
        k = self.model.size
        metrics: list[list[EpochMetrics]] = [[] for _ in range(k)]
        diverged: list[tuple[int, int] | None] = [None] * k
        seconds = 0.0
        for epoch in range(1, self.cfg.epochs + 1):
            alive = [d is None for d in diverged]
            if not any(alive):
                break
            t0 = time.perf_counter()
            loss_sum, correct, bad_step = self._train_epoch(epoch)
            test_loss, test_correct = self._evaluate()
            elapsed = time.perf_counter() - t0
            seconds += elapsed
            n_seen = self.steps * self.cfg.batch_size
            host = torch.stack(
                [loss_sum, correct.double(), bad_step.double(), test_loss, test_correct.double()]
            ).cpu()
            lr_after = self.factors[epoch * self.steps]
            for j in range(k):
                if not alive[j]:
                    continue
                step = int(host[2, j])
                if step >= 0:
                    diverged[j] = (epoch, step)
                    continue
                tl = float(host[3, j]) / len(self.y_test)
                if not math.isfinite(tl):
                    diverged[j] = (epoch, -1)
                    continue
                metrics[j].append(
                    EpochMetrics(
                        epoch,
                        float(host[0, j]) / n_seen,
                        int(host[1, j]) / n_seen,
                        tl,
                        int(host[4, j]) / len(self.y_test),
                        self.cfgs[j].optimizer.lr * lr_after,
                        elapsed / k,
                    )
                )
            self._freeze([j for j in range(k) if alive[j] and diverged[j] is not None])
            if on_epoch is not None:
                on_epoch(epoch)
        per_run = seconds / k
        return [
            RunResult("ok" if d is None else "unstable", metrics[j], per_run, d)
            for j, d in enumerate(diverged)
        ]

    @torch.no_grad()
    def _freeze(self, stopped: list[int]) -> None:
        """Stop training the configurations ``stopped`` (just diverged): their weights and
        momenta become 0 and their learning rates 0, so they compute finite numbers in their
        slices from now on and stay put."""
        if not stopped:
            return
        m, at = self.model, torch.tensor(stopped, device=self.device)
        for t in [*m.params, *(b for b in self.momenta if b is not None)]:
            t[at] = 0.0
        m.lr[at] = 0.0
        self.lr = per_tensor(m.lr, m.params)

    def state_dicts(self) -> list[dict[str, Tensor]]:
        """Each configuration's parameters by name (views of the stacked tensors); those of a
        configuration that diverged are zeros."""
        m = self.model
        return [
            {n: p[j].detach() for n, p in zip(m.names, m.params, strict=True)}
            for j in range(m.size)
        ]

    def _batches(self, epoch: int) -> Tensor:
        """``(steps, K, B)`` example indices of each configuration's batches in ``epoch``."""
        b = self.cfg.batch_size
        orders = []
        for loader in self.loaders:
            order = loader.order(epoch)
            assert order is not None
            orders.append(order[: self.steps * b].reshape(self.steps, b))
        return torch.stack(orders, dim=1).to(self.device)

    def _loss(
        self, x: Tensor, y: Tensor, params: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(per-configuration mean losses (K,), logits (K, B, C))`` at the current weights (or
        at ``params``)."""
        with autocast(self.cfg.precision, self.device):
            logits = self.model(x, params=params)
        losses = mean_loss(at_least_fp32(logits), y, self.cfg.loss, self.cfg.label_smoothing)
        return losses, logits

    def _train_epoch(self, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Device tensors ``(loss sum, correct, first non-finite step or -1)``, each ``(K,)``."""
        m, dev = self.model, self.device
        k = m.size
        loss_sum = torch.zeros(k, dtype=torch.float64, device=dev)
        correct = torch.zeros(k, dtype=torch.int64, device=dev)
        bad_step = torch.full((k,), -1, dtype=torch.int64, device=dev)
        alive = torch.ones(k, dtype=torch.bool, device=dev)
        batches = self._batches(epoch)
        for step in range(self.steps):
            idx = batches[step]
            x, y = self.x_train[idx], self.y_train[idx]
            losses, logits = self._loss(x, y)
            grads = torch.autograd.grad(losses.sum(), m.params)
            if self.perturbed:
                grads = self._second_pass(x, y, grads)
            t = (epoch - 1) * self.steps + step
            sgd_step_(
                m.params,
                grads,
                self.momenta,
                self.lr,
                self.wd,
                momentum=m.momentum,
                dampening=m.dampening,
                nesterov=m.nesterov,
                lr_factor=self.factors[t],
            )
            with torch.no_grad():
                finite = torch.isfinite(losses)
                bad_step = torch.where(alive & ~finite, step, bad_step)
                alive &= finite
                loss_sum += torch.where(alive, losses.double() * len(y[0]), 0.0)
                correct += torch.where(alive, (logits.argmax(-1) == y).sum(-1), 0)
        return loss_sum, correct, bad_step

    def _second_pass(self, x: Tensor, y: Tensor, grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The gradients at ``w + eps``. The perturbed tensors are new leaves handed to the
        forward pass in place of ``w``, which is never modified: nothing to save or restore."""
        m, table = self.model, self.model.perturb
        with torch.no_grad():
            g = [grads[i] for i in table.index]
            d, k = perturbation_direction(
                table.factors, self.perturbed, g, table.rho2c, table.rho2s, table.eta
            )
            moved = torch._foreach_addcmul(self.perturbed, d, per_tensor(k, self.perturbed))
        at = list(m.params)
        for i, t in zip(table.index, moved, strict=True):
            at[i] = t.requires_grad_(True)
        losses, _ = self._loss(x, y, at)
        return torch.autograd.grad(losses.sum(), at)

    @torch.no_grad()
    def _evaluate(self) -> tuple[Tensor, Tensor]:
        """``(summed test loss (K,) float64, correct (K,))`` in eval mode, the test set shared."""
        m, dev = self.model, self.device
        m.module.eval()
        loss = torch.zeros(m.size, dtype=torch.float64, device=dev)
        correct = torch.zeros(m.size, dtype=torch.int64, device=dev)
        step = self.cfg.eval_batch_size
        for lo in range(0, len(self.y_test), step):
            x, y = self.x_test[lo : lo + step], self.y_test[lo : lo + step]
            with autocast(self.cfg.precision, dev):
                logits = at_least_fp32(m(x, shared_input=True))
            yy = y.expand(m.size, -1)
            loss += sum_loss(logits, yy, self.cfg.loss).double()
            correct += (logits.argmax(-1) == yy).sum(-1)
        m.module.train()
        return loss, correct
