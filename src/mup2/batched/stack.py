"""``K`` models of one architecture as one stacked model, and their optimizer tables.

Each parameter of the ``K`` models (built and initialized exactly as :func:`mup2.train` builds
them, one per config) becomes one leaf tensor of shape ``(K, *shape)``; the forward pass is
``torch.func.functional_call`` under ``torch.vmap``, so every product is one batched kernel.
Configuration ``j`` sees only slice ``j``: nothing mixes configurations, so a NaN in one stays
there.

The per-configuration hyperparameters are ``(K, n)`` tensors over the ``n`` parameters, read
from each config's own :class:`mup2.SAM` (built with :func:`mup2.train.make_optimizer` and then
dropped): the LR multipliers and weight decays of its param groups, and its perturbation plan
(``rho**2 c``, ``rho**2 s`` and the ASAM offsets, from :mod:`mup2.optim.rules`). A tensor that a
configuration does not perturb has ``rho = 0`` in that configuration's row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mup2.batched.bundle import BatchError
from mup2.config import TrainConfig
from mup2.optim.rules import Factor
from mup2.parametrization.parametrize import Parametrization
from mup2.train import make_model, make_optimizer

__all__ = ["PerturbTable", "StackedModel", "build_stack"]


@dataclass(frozen=True)
class PerturbTable:
    """The perturbed parameters (indices into :attr:`StackedModel.names`) and, per
    configuration, their ``rho**2 c``, ``rho**2 s`` and ASAM offset ``eta``: ``(K, m)``."""

    index: list[int]
    factors: list[Factor]
    rho2c: Tensor
    rho2s: Tensor
    eta: Tensor


@dataclass
class StackedModel:
    """``params[i]``: the stacked ``(K, *shape)`` leaf of parameter ``names[i]``; ``buffers``
    likewise (constant buffers only). ``lr`` (base LR x LR multiplier) and ``weight_decay`` are
    ``(K, n)``; ``module`` runs the forward pass of one slice."""

    module: nn.Module
    names: list[str]
    params: list[Tensor]
    buffers: dict[str, Tensor]
    lr: Tensor
    weight_decay: Tensor
    momentum: float
    dampening: float
    nesterov: bool
    perturb: PerturbTable

    @property
    def size(self) -> int:
        """``K``, the number of configurations."""
        return int(self.lr.shape[0])

    def __call__(
        self, x: Tensor, shared_input: bool = False, params: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Logits ``(K, B, classes)`` for inputs ``(K, B, ...)`` (``shared_input``: ``(B, ...)``,
        the same batch for every configuration), at :attr:`params` or at ``params`` (stacked
        tensors aligned with :attr:`names`, e.g. the perturbed point)."""

        def one(params: tuple[Tensor, ...], buffers: dict[str, Tensor], xs: Tensor) -> Tensor:
            state = {**dict(zip(self.names, params, strict=True)), **buffers}
            out: Tensor = functional_call(self.module, state, (xs,))
            return out

        run = torch.vmap(one, in_dims=(0, 0, None if shared_input else 0))
        out: Tensor = run(tuple(self.params if params is None else params), self.buffers, x)
        return out


@dataclass(frozen=True)
class _Tables:
    """One configuration's optimizer tables, by parameter name: LR (base LR x multiplier),
    weight decay, the perturbation plan's ``(rho**2 c, rho**2 s, eta, factor)``, and the
    ``(momentum, dampening, nesterov)`` of each of its param groups."""

    lr: dict[str, float]
    weight_decay: dict[str, float]
    plan: dict[str, tuple[float, float, float, Factor]]
    sgd: frozenset[tuple[float, float, bool]]


def _build_one(
    config: TrainConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    p: Parametrization | None,
) -> tuple[nn.Module, _Tables, Parametrization]:
    """Config ``config``'s model, initialized as :func:`mup2.train` does, and its tables from its
    own :class:`mup2.SAM` (dropped after)."""
    model, p = make_model(config, input_shape, num_classes, p)
    _check_module(model)
    opt = make_optimizer(config, model, p)
    of = {id(t): n for n, t in model.named_parameters()}
    lr, wd = dict.fromkeys(of.values(), 0.0), dict.fromkeys(of.values(), 0.0)
    for g in opt.param_groups:
        for t in g["params"]:
            lr[of[id(t)]] = g["lr"] * g["lr_mult"]
            wd[of[id(t)]] = g["weight_decay"]
    sgd = frozenset((g["momentum"], g["dampening"], g["nesterov"]) for g in opt.param_groups)
    plan = opt.perturbation_plan()
    rows = zip(
        plan.params, plan.rho2c.tolist(), plan.rho2s.tolist(), plan.eta, plan.factors, strict=True
    )
    table = {of[id(t)]: (float(a), float(b), float(e), f) for t, a, b, e, f in rows}
    return model, _Tables(lr, wd, table, sgd), p


def build_stack(
    configs: Sequence[TrainConfig],
    input_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    threads: int | None = None,
) -> StackedModel:
    """The ``K`` models of ``configs`` stacked on ``device``, with their optimizer tables.

    The models are built on the CPU, ``threads`` at a time (default: up to 8, one per CPU core;
    torch's kernels run outside the GIL), each copied into its slice as it comes, so that only
    a few are in host memory at once. The first config of each scheme and rule is built first:
    the others reuse its parametrization. The first model runs the forward pass of one slice."""
    k = len(configs)
    threads = threads or max(1, min(8, os.cpu_count() or 1))
    inferred: dict[tuple[str, str], Parametrization] = {}
    first: dict[int, tuple[nn.Module, _Tables]] = {}
    for j, config in enumerate(configs):
        key = (config.scheme, config.sam.rule)
        if key not in inferred:
            model, tables, inferred[key] = _build_one(config, input_shape, num_classes, None)
            first[j] = (model, tables)
    module = first[0][0]
    named = dict(module.named_parameters())
    names = list(named)
    params = [_stacked(named[n], k, device) for n in names]
    buffers = {n: _stacked(b, k, device) for n, b in module.named_buffers()}
    built: list[_Tables | None] = [None] * k

    def place(j: int, model: nn.Module, tables: _Tables) -> None:
        with torch.no_grad():
            weights = dict(model.named_parameters())
            for n, t in zip(names, params, strict=True):
                t[j].copy_(weights[n])
            for n, buf in model.named_buffers():
                buffers[n][j].copy_(buf)
        built[j] = tables

    for j, (model, tables) in first.items():
        place(j, model, tables)
    rest = [j for j in range(k) if j not in first]

    def build(c: TrainConfig) -> tuple[nn.Module, _Tables]:
        model, tables, _ = _build_one(c, input_shape, num_classes, inferred[(c.scheme, c.sam.rule)])
        return model, tables

    with ThreadPoolExecutor(threads) as pool:
        for lo in range(0, len(rest), threads):
            chunk = rest[lo : lo + threads]
            made = pool.map(build, [configs[j] for j in chunk])
            for j, (model, tables) in zip(chunk, made, strict=True):
                place(j, model, tables)
    done = [t for t in built if t is not None]
    assert len(done) == k
    sgd = frozenset().union(*(t.sgd for t in done))
    if len(sgd) > 1:  # pragma: no cover - one optimizer config per bundle
        raise BatchError(f"param groups differ in (momentum, dampening, nesterov): {sorted(sgd)}")
    ((momentum, dampening, nesterov),) = sgd
    dtype = params[0].dtype
    for t in params:
        t.requires_grad_(True)
    table = _perturb_table(names, [t.plan for t in done], dtype, device)
    return StackedModel(
        module.to(device),
        names,
        params,
        buffers,
        torch.tensor([[t.lr[n] for n in names] for t in done], dtype=dtype, device=device),
        torch.tensor(
            [[t.weight_decay[n] for n in names] for t in done], dtype=dtype, device=device
        ),
        float(momentum),
        float(dampening),
        bool(nesterov),
        table,
    )


def _stacked(like: Tensor, k: int, device: torch.device) -> Tensor:
    return torch.empty((k, *like.shape), dtype=like.dtype, device=device)


def _perturb_table(
    names: list[str],
    plans: list[dict[str, tuple[float, float, float, Factor]]],
    dtype: torch.dtype,
    device: torch.device,
) -> PerturbTable:
    index = [i for i, n in enumerate(names) if any(n in plan for plan in plans)]
    factors: list[Factor] = []
    for i in index:
        found = {plan[names[i]][3] for plan in plans if names[i] in plan}
        if len(found) > 1:
            raise BatchError(
                f"{names[i]}: the configs perturb it with different factors {sorted(found)}; "
                "put rules of one factor in a bundle"
            )
        factors.append(found.pop())
    rows = [[plan.get(names[i], (0.0, 0.0, 0.0, None))[:3] for i in index] for plan in plans]
    table = torch.tensor(rows, dtype=dtype, device=device).reshape(len(plans), len(index), 3)
    rho2c, rho2s, eta = table.unbind(2)
    return PerturbTable(index, factors, rho2c, rho2s, eta)


def _check_module(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise BatchError(f"{name}: BatchNorm's running statistics are not stacked")
        if isinstance(m, nn.Dropout) and m.p > 0:
            raise BatchError(f"{name}: dropout draws per-run random numbers; use batch = 1")
