"""SAM, ASAM and SAM-ON with naive, global and μP² perturbation scaling, wrapping any optimizer.

One step: ``g = ∇L(w)``, ``eps = perturbation(g, w)`` (:mod:`mup2.optim.perturb`), ``w + eps``,
``g' = ∇L(w + eps)``, restore ``w``, then the base optimizer steps with ``g'``. Weight decay,
momentum and gradient clipping act only in the base step; the ascent uses the loss gradient alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, cast, get_args

import torch
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from mup2.errors import (
    check_class,
    check_finite,
    check_instance,
    check_integer,
    check_iterable,
    check_number,
    reads_as_number,
)
from mup2.optim.contexts import frozen_bn_stats, gradient_sync, no_sync
from mup2.optim.looksam import orthogonal_, reuse_
from mup2.optim.lr_multipliers import attach_lr_multipliers
from mup2.optim.perturb import by_device_and_dtype, perturbation_direction
from mup2.optim.rules import RULES, Factor, Rule, get_rule
from mup2.optim.shards import Reduce, is_dtensor, local, locals_, shard_reducer
from mup2.roles import Role

__all__ = ["SAM", "Between", "Plan", "Restore", "check_params", "owns_storage"]

Restore = Literal["copy", "swap", "subtract"]
#: What the steps between two SAM steps do (``every > 1``): the base step on the plain gradient
#: (``"sgd"``, Composer's ``interval``) or on LookSAM's gradient (:mod:`mup2.optim.looksam`).
Between = Literal["sgd", "looksam"]

#: Group keys SAM reads besides its hyperparameters, with their values for plain params (base
#: width, where μP² is plain SAM); :meth:`mup2.Parametrization.param_groups` sets them.
_GROUP_DEFAULTS: dict[str, Any] = {
    "rho_mult": 1.0,
    "role": Role.SCALAR.value,
    "m_in": 1.0,
    "m_out": 1.0,
    "width_mult": 1.0,
    "norm": False,
    "lr_mult": 1.0,
    "weight_scale": 1.0,
}

#: Keyword arguments of torch's optimizers that are numbers: a string there is refused by
#: name (torch would fail later, comparing it with a number).
_NUMBERS = frozenset(
    {"lr", "momentum", "dampening", "weight_decay", "eps", "betas", "alpha", "lr_decay"}
)
#: Group keys that must be numbers: the hyperparameters and the width metadata SAM reads.
_GROUP_NUMBERS = (
    _NUMBERS | {"rho", "eta"} | {k for k, v in _GROUP_DEFAULTS.items() if isinstance(v, float)}
)


def check_params(params: ParamsT) -> ParamsT:
    """The ``params`` of an optimizer, checked: not a model (its parameters are wanted), and a
    generator read into a list (:func:`mup2.errors.check_iterable`: one already read, and so
    empty, is an error that says so)."""
    if isinstance(params, nn.Module):
        raise TypeError(
            f"params must be the tensors or param groups to optimize, got {type(params).__name__}"
            " (a model); pass model.parameters(), or the groups of "
            "mup2.Parametrization.infer(...).param_groups(model)"
        )
    if isinstance(params, Iterator):
        return check_iterable("params", params, again="call model.parameters() again")
    return params


@dataclass(frozen=True)
class Plan:
    """The perturbed tensors of one step with their buffers and factors, aligned by index.

    ``rho``, ``c``, ``s``, ``rho2c`` (``rho**2 c``) and ``rho2s`` are 1-D tensors with one entry
    per tensor; ``eta`` is each tensor's ASAM offset and ``factors`` the factor ``A`` of its
    rule. ``buckets`` groups the indices of tensors with equal ``(rho, c)`` so that a scale
    proportional to ``rho**2 c`` is applied with one multi-tensor call per bucket. Under FSDP
    ``params``/``bufs`` are the local shards in :meth:`SAM.first_step`, ``owners`` the
    parameters (state keys) and ``reduce`` sums squared norms across the shards. ``uniform``:
    all tensors share one device and dtype (then norms skip grouping them on every step).
    ``bucketed``: SAM's closed-form scale ``k`` is constant within each bucket (no layerwise
    ASAM factor). ``swappable``: every tensor is a plain tensor that is its whole storage,
    shared with no other tensor of the plan (:func:`owns_storage`), so ``restore="swap"`` may
    exchange its storage with its buffer's."""

    params: list[Tensor]
    bufs: list[Tensor]
    rho: Tensor
    c: Tensor
    s: Tensor
    rho2c: Tensor
    rho2s: Tensor
    eta: list[float]
    factors: list[Factor]
    keys: list[tuple[float, float]]
    buckets: list[list[int]]
    owners: list[Tensor]
    reduce: Reduce | None
    uniform: bool
    bucketed: bool
    swappable: bool

    def subset(self, keep: Sequence[int]) -> Plan:
        keys = [self.keys[i] for i in keep]
        idx = torch.tensor(keep, dtype=torch.long, device=self.rho.device)
        return Plan(
            [self.params[i] for i in keep],
            [self.bufs[i] for i in keep],
            self.rho[idx],
            self.c[idx],
            self.s[idx],
            self.rho2c[idx],
            self.rho2s[idx],
            [self.eta[i] for i in keep],
            [self.factors[i] for i in keep],
            keys,
            _buckets(keys),
            [self.owners[i] for i in keep],
            shard_reducer([self.owners[i] for i in keep]),
            self.uniform,
            self.bucketed,
            self.swappable,
        )

    def local(self) -> Plan:
        """The plan over the local shards of sharded (FSDP) tensors; itself when none is."""
        if self.reduce is None:
            return self
        return replace(self, params=locals_(self.params), bufs=locals_(self.bufs))


def owns_storage(tensors: Sequence[Tensor]) -> bool:
    """Whether each of ``tensors`` is a plain strided tensor that spans its whole storage and
    shares it with none of the others: then exchanging its storage with another tensor's leaves
    no alias behind. Not so for DTensors (FSDP2 computes from its own sharded storage), tensor
    subclasses, and views into a larger buffer (flat-parameter and bucket-view wrappers)."""
    ptrs = set()
    for t in tensors:
        data = t.data
        if (
            is_dtensor(t)
            or type(data) is not Tensor
            or data.layout != torch.strided
            or data.storage_offset() != 0
            or data.untyped_storage().nbytes() != data.numel() * data.element_size()
        ):
            return False
        ptrs.add(data.untyped_storage().data_ptr())
    return len(ptrs) == len(tensors)


def _buckets(keys: Sequence[tuple[float, float]]) -> list[list[int]]:
    out: dict[tuple[float, float], list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return list(out.values())


def _scales(plan: Plan, k: Tensor, bucketed: bool) -> list[tuple[list[int] | None, list[Tensor]]]:
    """``(indices, scales)`` per multi-tensor call applying ``eps = k d`` (``None``: all tensors,
    the common case of one bucket); a bucket's scales repeat one 0-d tensor."""
    if not bucketed:
        return [(None, list(k.unbind()))]
    if len(plan.buckets) == 1:
        return [(None, [k[0]] * len(plan.params))]
    return [(idx, [k[idx[0]]] * len(idx)) for idx in plan.buckets]


def _local_grads(params: Sequence[Tensor]) -> list[Tensor]:
    """The gradients of ``params`` (which have one), local shards under FSDP."""
    return [local(cast(Tensor, p.grad)) for p in params]


def _pick(tensors: list[Tensor], idx: list[int] | None) -> list[Tensor]:
    return tensors if idx is None else [tensors[i] for i in idx]


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimization around any torch optimizer.

    Args:
        params: tensors or param groups; groups from :meth:`mup2.Parametrization.param_groups`
            carry the width metadata that ``global``/``mup2`` scaling need (plain params count
            as base width, where μP² is plain SAM). ``rho``, ``rule``, ``scaling`` and ``eta``
            are group hyperparameters: each group may set its own (they share one norm).
        base_optimizer: the optimizer class for the descent (``torch.optim.SGD``, ``AdamW``, ...);
            it shares ``param_groups`` with SAM, so LR schedulers may wrap either.
        rho: perturbation radius. ``rho = 0`` is exactly the base optimizer.
        rule: ``"sam"``, ``"asam"`` (elementwise, ``|W| + eta``), ``"asam-layerwise"``
            (``||W||_F + eta``) or ``"sam-on"`` (only groups with ``norm=True`` are perturbed);
            see :mod:`mup2.optim.rules`.
        scaling: ``"naive"``, ``"global"``, ``"mup2"`` (layerwise, balanced) or ``"mup2-coupled"``.
        eta: the ASAM offset ``η_A``. For elementwise ASAM under ``mup2`` scaling each tensor's
            offset is multiplied by its group's ``weight_scale`` (how its entries scale with
            width), so that ``|W| + eta`` keeps its meaning at every width.
        restore: how ``w`` is restored after the perturbed pass: ``"copy"`` (default) saves
            ``w`` in the buffer and copies it back, exactly, and parameter storage never moves;
            ``"swap"`` saves ``w`` likewise but restores by exchanging storage with the buffer
            (exact, one pass fewer; ``p.data_ptr()`` alternates between two allocations, so
            nothing else may hold the storage: not for CUDA graphs or tensors aliasing
            ``p.data``; plans with DTensors or views into a larger buffer are copied, see
            :func:`owns_storage`); ``"subtract"`` keeps ``eps`` in the buffer and subtracts it
            (``w + eps - eps`` may differ from ``w`` by a rounding). Each way one
            parameter-sized buffer persists.
        model: optional; :meth:`step` then runs the first pass under DDP ``no_sync`` (unless
            ``sync_perturbation``) and the second with frozen BatchNorm statistics.
        sync_perturbation: under DDP, all-reduce the first-pass gradients (one shared
            perturbation) instead of perturbing each replica with its own gradient.
        every: SAM's second pass only on every ``every``-th step with ``rho > 0`` (the first of
            each cycle: steps 0, k, 2k, ... of a counter :attr:`sam_step` that is saved with the
            state); the steps in between take one forward/backward pass and the base step on
            the gradient that ``between`` says. Steps with ``rho = 0`` in every group are not
            counted (after a ρ schedule switches SAM on, its first step is a SAM step).
        between: ``"sgd"``: the base step on the plain gradient (Composer's ``interval``);
            ``"looksam"``: LookSAM (Liu et al. 2022): each SAM step stores the component
            ``g_v`` of its gradient orthogonal to the first-pass gradient, the steps in between
            descend along ``g + alpha (||g|| / ||g_v||) g_v`` (:mod:`mup2.optim.looksam`; every
            parameter with a gradient, perturbed or not). Under DDP LookSAM's first pass is
            always reduced (``g_v`` must be the same on every replica).
        alpha: LookSAM's ``alpha``.
        layerwise: LookSAM's projections and norms per tensor instead of over all tensors.
        **base_kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ...).

    Use :meth:`step` with a closure, or :meth:`first_step`, a second backward, then
    :meth:`second_step` when :meth:`is_sam_step` (else one backward and :meth:`second_step`).
    Subclasses change the ascent through :meth:`_perturbation` over a :class:`Plan` (as
    :class:`mup2.LightSAM` does) and list the rules they take in ``RULES``.
    """

    #: The rule names this class accepts (:mod:`mup2.optim.rules`).
    RULES: ClassVar[tuple[str, ...]] = RULES

    def __init__(
        self,
        params: ParamsT,
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.05,
        rule: str = "sam",
        scaling: str = "mup2",
        eta: float = 0.01,
        restore: Restore = "copy",
        model: nn.Module | None = None,
        sync_perturbation: bool = False,
        every: int = 1,
        between: Between = "sgd",
        alpha: float = 0.7,
        layerwise: bool = False,
        **base_kwargs: Any,
    ) -> None:
        params = check_params(params)
        check_class(
            "base_optimizer",
            base_optimizer,
            torch.optim.Optimizer,
            "a torch optimizer class",
            "pass the class, and its arguments as keywords: "
            f"{type(self).__name__}(params, torch.optim.SGD, lr=0.1, momentum=0.9)",
        )
        check_number("rho", rho)
        check_number("eta", eta)
        check_integer("every", every)
        check_number("alpha", alpha)
        if every < 1:
            raise ValueError(f"every must be >= 1 (1: SAM on every step), got {every}")
        if between not in get_args(Between):
            raise ValueError(f"between must be one of {list(get_args(Between))}, not {between!r}")
        if not alpha >= 0.0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        for name, value in base_kwargs.items():  # torch's take lr="0.1", lr=nan, inf
            if name in _NUMBERS or reads_as_number(value):
                check_number(name, value)
            else:
                check_finite(name, value)
        if model is not None:
            check_instance("model", model, nn.Module, "the nn.Module it trains (or None)")
        if restore not in get_args(Restore):
            raise ValueError(f"restore must be one of {list(get_args(Restore))}, not {restore!r}")
        self.model, self.sync_perturbation = model, sync_perturbation
        self._base: torch.optim.Optimizer | None = None
        defaults = {"rho": rho, "rule": rule, "scaling": scaling, "eta": eta, **_GROUP_DEFAULTS}
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        check_instance(
            "base_optimizer(...)", self.base_optimizer, torch.optim.Optimizer, "a torch optimizer"
        )
        self._base = self.base_optimizer
        self.param_groups = self.base_optimizer.param_groups
        for i, group in enumerate(self.param_groups):
            self._check_group(i, group)
        self.defaults.update(self.base_optimizer.defaults)
        attach_lr_multipliers(self.base_optimizer)
        self._check_norm_only()
        self.restore: Restore = restore
        self._buffers: dict[Tensor, Tensor] = {}
        self._perturbed: tuple[list[Tensor], list[Tensor], Restore] | None = None
        self._ascended = False  # first_step() ran since the last base step
        self._plan_key: tuple[Any, ...] | None = None
        self._plan: Plan | None = None
        self.every, self.between = every, between
        self.alpha, self.layerwise = float(alpha), bool(layerwise)
        #: Steps taken with ``rho > 0`` (the cycle of ``every``); saved with the state.
        self.sam_step = 0
        self._saved_g = False  # first_step() kept the first-pass gradients (LookSAM)

    @property
    def rule(self) -> str:
        """The default rule (``defaults["rule"]``); each param group holds its own."""
        return str(self.defaults["rule"])

    @property
    def scaling(self) -> str:
        """The default perturbation scaling (``defaults["scaling"]``); groups hold their own."""
        return str(self.defaults["scaling"])

    def _check_group(self, i: int, group: dict[str, Any]) -> Rule:
        """Refuse a group whose hyperparameters this optimizer cannot run; its rule."""
        for name, value in group.items():
            if name in _GROUP_NUMBERS or (name != "params" and reads_as_number(value)):
                check_number(f"param group {i}: {name}", value)
            elif name != "params":
                check_finite(f"param group {i}: {name}", value)
        if not (group["rho"] >= 0.0):
            raise ValueError(f"rho must be >= 0, got {group['rho']}")
        if not (group["eta"] >= 0.0):
            raise ValueError(f"eta must be >= 0, got {group['eta']}")
        rule = get_rule(group["rule"])
        if rule.name not in self.RULES:
            raise ValueError(f"param group {i}: {self._wrong_rule(rule)}")
        rule.scaling(group["scaling"])  # a clear error for an unknown or undefined scaling
        return rule

    def _wrong_rule(self, rule: Rule) -> str:
        if rule.lightsam is not None:
            return (
                f"rule {rule.name!r} is LightSAM's: use mup2.LightSAM(params, "
                f"variant={rule.lightsam!r}) (mup2.SAM takes {list(RULES)})"
            )
        if rule.one_pass:
            return (
                f"rule {rule.name!r} is one-pass: use mup2.{rule.label}(params, ...) "
                f"({type(self).__name__} takes {list(self.RULES)})"
            )
        return f"{type(self).__name__} takes the rules {list(self.RULES)}, not {rule.name!r}"

    def _check_norm_only(self) -> None:
        norm_only = [g for g in self.param_groups if get_rule(g["rule"]).norm_only]
        if norm_only and not any(g["norm"] for g in norm_only):
            raise ValueError(
                f"rule {norm_only[0]['rule']!r} perturbs normalization parameters only, and no "
                "param group has norm=True: the model has no normalization layers (give it "
                "some, e.g. MLP(width, norm='layer')), or its groups lack the metadata (build "
                "them with mup2.Parametrization.infer(...).param_groups(model))"
            )
        by_role = [g for g in self.param_groups if get_rule(g["rule"]).roles is not None]
        perturbed = (get_rule(g["rule"]).perturbs(g["norm"], g["role"]) for g in by_role)
        if by_role and not any(perturbed):
            rule = get_rule(by_role[0]["rule"])
            raise ValueError(
                f"rule {rule.name!r} perturbs only {' and '.join(sorted(rule.roles or ()))}-like "
                "tensors, and no param group of that rule has one (a readout tied to an "
                "embedding is input-like: override its role, or use another rule)"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        rule = get_rule(param_group.get("rule", self.defaults["rule"]))
        if rule.roles is not None and "role" not in param_group:  # before defaults fill it in
            raise ValueError(
                f"rule {rule.name!r} perturbs tensors by their role "
                f"({', '.join(sorted(r.value for r in rule.roles))}), and a param group has no "
                "'role': build the groups with mup2.Parametrization.infer(...).param_groups(model)"
            )
        super().add_param_group(param_group)
        if self._base is not None:  # after construction: keep the base optimizer in step
            group = self.param_groups.pop()
            self._check_group(len(self.param_groups), group)
            self._base.add_param_group(group)
            self.param_groups = self._base.param_groups
            self._check_norm_only()

    # -- the perturbation -----------------------------------------------------------------

    def perturbation_plan(self) -> Plan:
        """The perturbed tensors, their buffers and factors; cached until a group's ``rho``,
        ``rule``, ``scaling`` or ``eta`` changes."""
        key = tuple(
            (g["rho"], g["rho_mult"], g["rule"], g["scaling"], g["eta"], len(g["params"]))
            for g in self.param_groups
        )
        if key != self._plan_key or self._plan is None:
            params: list[Tensor] = []
            rows: list[tuple[float, float, float]] = []
            eta: list[float] = []
            factors: list[Factor] = []
            for g in self.param_groups:
                rule = get_rule(g["rule"])
                rho = g["rho"] * g["rho_mult"]
                if rho == 0.0 or not rule.perturbs(g["norm"], g["role"]):
                    continue
                role, n = Role(g["role"]), len(g["params"])
                table = rule.scaling(g["scaling"])
                depth = (g.get("depth_mult", 1.0), g.get("depth_alpha", 1.0))  # docs/math.md §9
                args = (g["m_in"], g["m_out"], g["width_mult"], *depth)
                c, s = table.c[role](*args), table.s[role](*args)
                scale = g["weight_scale"] if g["scaling"] in rule.offset_scales else 1.0
                params += g["params"]
                rows += [(rho, c, s)] * n
                eta += [g["eta"] * scale] * n
                factors += [rule.factor] * n
            dev = params[0].device if params else torch.device("cpu")
            dt = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
            table_ = torch.tensor(rows, device=dev, dtype=dt).reshape(-1, 3)
            rho_, c_, s_ = table_.unbind(1)
            keys = [(r, c) for r, c, _ in rows]
            self._plan = Plan(
                params,
                [self._buffer(p) for p in params],
                rho_,
                c_,
                s_,
                rho_ * rho_ * c_,
                rho_ * rho_ * s_,
                eta,
                factors,
                keys,
                _buckets(keys),
                params,
                shard_reducer(params),
                len(by_device_and_dtype(params)) <= 1,
                Factor.LAYERWISE not in factors,
                owns_storage(params),
            )
            self._plan_key = key
        return self._plan

    def _perturbation(self, plan: Plan, grads: list[Tensor]) -> tuple[list[Tensor], Tensor, bool]:
        """The ascent, the extension point of subclasses: ``(d, k, bucketed)`` with
        ``eps_W = k_W d_W`` for the tensors of ``plan`` and their ``grads`` (local shards under
        FSDP); ``bucketed``: ``k`` is constant within each of ``plan.buckets``. This one is the
        closed-form formula (:func:`mup2.optim.perturb.perturbation_direction`)."""
        d, k = perturbation_direction(
            plan.factors,
            plan.params,
            grads,
            plan.rho2c,
            plan.rho2s,
            plan.eta,
            scratch=plan.bufs,
            reduce=plan.reduce,
            uniform=plan.uniform,
        )
        return d, k, plan.bucketed

    def _ascent_inputs(self, plan: Plan) -> tuple[Plan, list[Tensor]]:
        """The tensors the ascent moves and what it reads for each, the other extension point
        of subclasses: here the tensors of ``plan`` that have a gradient, and their gradients
        (the one-pass :class:`mup2.MSAM` reads the base optimizer's momentum instead)."""
        grads = [p.grad for p in plan.params]
        if any(g is None for g in grads):
            plan = plan.subset([i for i, g in enumerate(grads) if g is not None])
            grads = [p.grad for p in plan.params]
        return plan, grads  # type: ignore[return-value]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``w + eps`` using the current gradients (tensors without one stay put)."""
        if self._perturbed is not None:
            raise RuntimeError("first_step() called twice without second_step() in between")
        if self.between == "looksam":  # keep g for g_v, in the buffers g_v will take
            params = self._with_grads()
            torch._foreach_copy_(self._gv(params), _local_grads(params))
            self._saved_g = True
        plan, grads = self._ascent_inputs(self.perturbation_plan())
        if plan.params:
            if plan.reduce is not None:  # FSDP: compute on the local shards
                plan, grads = plan.local(), locals_(grads)
            d, k, bucketed = self._perturbation(plan, grads)
            restore = self.restore
            if restore == "subtract":
                torch._foreach_copy_(plan.bufs, d)
                for idx, scales in _scales(plan, k, bucketed):
                    torch._foreach_mul_(_pick(plan.bufs, idx), scales)
                torch._foreach_add_(plan.params, plan.bufs)
            else:
                torch._foreach_copy_(plan.bufs, plan.params)
                for idx, scales in _scales(plan, k, bucketed):
                    torch._foreach_addcmul_(_pick(plan.params, idx), _pick(d, idx), scales)
                if restore == "swap" and not plan.swappable:
                    restore = "copy"
            self._perturbed = (plan.params, plan.bufs, restore)
        self._ascended = True
        if zero_grad:
            self.zero_grad()

    def _buffer(self, p: Tensor) -> Tensor:
        buf = self._buffers.get(p)
        if buf is None:
            buf = self._buffers[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf

    @torch.no_grad()
    def unperturb(self) -> None:
        """Restore exactly the tensors that :meth:`first_step` perturbed."""
        self._restore()

    def _restore(self) -> None:  # under no_grad
        if self._perturbed is None:
            return
        params, bufs, restore = self._perturbed
        if restore == "swap":  # the buffer holds w: the parameter takes its storage, and back
            for p, b in zip(params, bufs, strict=True):
                w_eps = p.data
                p.data = b
                b.data = w_eps
        elif restore == "subtract":
            torch._foreach_sub_(params, bufs)
        else:
            torch._foreach_copy_(params, bufs)
        self._perturbed = None

    @torch.no_grad()
    def second_step(
        self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        """Restore ``w`` and take the base optimizer's step with the current (perturbed) gradients.

        With an AMP ``scaler``, the step goes through ``scaler.step`` (which unscales once and
        skips non-finite steps); call ``scaler.update()`` afterwards as usual.
        """
        self._restore()
        if self.needs_second_pass():  # a step of the cycle of ``every``
            if self.between == "looksam":
                self._looksam()
            self.sam_step += 1
        self._saved_g = False
        if scaler is not None:
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        self._ascended = False
        self._opt_called = True  # tells LR schedulers that the optimizer stepped
        if zero_grad:
            self.zero_grad()

    def _with_grads(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _gv(self, params: Sequence[Tensor]) -> list[Tensor]:
        """LookSAM's ``g_v`` of ``params`` (local shards under FSDP), created as zeros."""
        out = []
        for p in params:
            state = self.state[p]
            if "looksam_gv" not in state:
                state["looksam_gv"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out.append(local(state["looksam_gv"]))
        return out

    @torch.no_grad()
    def _looksam(self) -> None:
        """After a SAM step's second pass: ``g_v`` from the kept ``g`` and the current ``g_s``;
        after one pass in between: the current gradients become LookSAM's."""
        if self._saved_g:
            params = [p for p in self._with_grads() if "looksam_gv" in self.state[p]]
            orthogonal_(
                self._gv(params),
                _local_grads(params),
                self.layerwise,
                shard_reducer(params),
            )
            return
        params = [p for p in self._with_grads() if "looksam_gv" in self.state[p]]
        reuse_(
            _local_grads(params),
            self._gv(params),
            self.alpha,
            self.layerwise,
            shard_reducer(params),
        )

    def init_state(self) -> None:
        """Create the state a step would create (LookSAM's ``g_v`` of every parameter, zeros),
        so that a fresh optimizer has the structure a distributed checkpoint loads into."""
        if self.between == "looksam":
            self._gv([p for g in self.param_groups for p in g["params"] if p.requires_grad])

    def is_sam_step(self) -> bool:
        """Whether the next step takes SAM's second pass: some group perturbs
        (:meth:`needs_second_pass`) and it is the first step of its cycle of ``every``."""
        return self.needs_second_pass() and self.sam_step % self.every == 0

    def needs_second_pass(self) -> bool:
        """Whether a step perturbs anything (some group has ``rho > 0`` and tensors its rule
        perturbs); if not, a step is exactly the base optimizer's on the first gradients."""
        return any(
            g["rho"] * g["rho_mult"] > 0 and get_rule(g["rule"]).perturbs(g["norm"], g["role"])
            for g in self.param_groups
        )

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor | None:
        """A whole SAM step; returns the loss at the unperturbed point (detached).

        ``closure`` zeroes the gradients, computes the loss, calls ``backward`` and returns the
        loss; it runs twice on a SAM step and once otherwise: when ``rho`` is 0 in every group
        (or no group's rule perturbs a tensor, e.g. the first steps of
        :class:`mup2.optim.LatePhase`), the step is the base optimizer's on the plain gradient;
        with ``every = k`` the ``k - 1`` steps after each SAM step take the one pass too
        (:meth:`is_sam_step`). Without a closure, ``step()`` is :meth:`second_step`: valid
        after :meth:`first_step` and the second backward, or after one backward on a step that
        is not :meth:`is_sam_step` (for frameworks that call ``optimizer.step()`` themselves,
        as the Trainer does).

        ``scaler``: an fp16 :class:`torch.amp.GradScaler` whose scaled loss the closure
        backpropagates. The first pass's gradients are unscaled before the ascent (LightSAM's
        accumulators need true gradients); if they overflowed, the ascent and the second pass
        are skipped and ``scaler.step`` skips the step. Call ``scaler.update()`` afterwards."""
        if closure is None:
            if not self._ascended and self.is_sam_step():
                raise RuntimeError(
                    f"{type(self).__name__}.step() needs a closure that computes the loss and "
                    "calls backward (SAM evaluates the gradient twice), or call first_step() "
                    "and a second backward before step()"
                )
            self.second_step(scaler=scaler)
            return None
        if scaler is not None and self.between == "looksam":
            raise ValueError(
                "LookSAM (between='looksam') takes no GradScaler: its stored g_v would hold "
                "the overflows of skipped steps; train in bf16 or fp32"
            )
        needs_second = self.is_sam_step()
        first: AbstractContextManager[Any] = nullcontext()
        second: AbstractContextManager[Any] = nullcontext()
        if self.model is not None:
            if needs_second and not self._synced_ascent():  # one pass: it needs reduced grads
                first = no_sync(self.model)
            second = frozen_bn_stats(self.model)
        with torch.enable_grad(), first:
            loss = closure()
        if needs_second and (scaler is None or self._unscale_finite(scaler)):
            self.first_step()
            with torch.enable_grad(), second:
                closure()
        self.second_step(scaler=scaler)
        return loss.detach()

    def step_accumulate(
        self,
        loss_fn: Callable[[Any], Tensor],
        micro_batches: Sequence[Any],
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        """One SAM step with gradient accumulation; returns the mean loss at ``w`` (detached).

        ``loss_fn(batch)`` runs the forward pass and returns the mean loss of one micro-batch
        (no ``backward``, no ``zero_grad``). The first pass accumulates ``∇L/n`` over the ``n``
        micro-batches, the perturbation is taken once, the second pass accumulates likewise,
        then the base optimizer steps once: with equal-sized micro-batches this is the step on
        their union. With ``model=``, gradients are reduced only in the last micro-batch's
        backward of each pass (DDP ``no_sync``, FSDP2 ``set_requires_gradient_sync``); under DDP
        without ``sync_perturbation`` the first pass is not reduced at all (per-replica ascent).
        The second pass runs with frozen BatchNorm statistics; the first updates them once per
        micro-batch. ``scaler``: as in :meth:`step`."""
        n = len(micro_batches)
        if n == 0:
            raise ValueError("step_accumulate needs at least one micro-batch")
        if scaler is not None and self.between == "looksam":
            raise ValueError("LookSAM (between='looksam') takes no GradScaler; use bf16 or fp32")
        second = self.is_sam_step()
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        per_replica = ddp and second and not self._synced_ascent()
        self.zero_grad()
        loss = self._accumulate(loss_fn, micro_batches, scaler, sync_last=not per_replica)
        if second and (scaler is None or self._unscale_finite(scaler)):
            self.first_step(zero_grad=True)
            frozen = nullcontext() if self.model is None else frozen_bn_stats(self.model)
            with frozen:
                self._accumulate(loss_fn, micro_batches, scaler, sync_last=True)
        self.second_step(scaler=scaler)
        return loss

    def _accumulate(
        self,
        loss_fn: Callable[[Any], Tensor],
        micro_batches: Sequence[Any],
        scaler: torch.amp.GradScaler | None,
        sync_last: bool,
    ) -> Tensor:
        """One pass of :meth:`step_accumulate`: backward of ``loss_fn(batch) / n`` (scaled by
        ``scaler`` if given) for each of the ``n`` micro-batches, adding to ``.grad``; with
        ``model=``, gradients are reduced in the last backward only, and only if ``sync_last``.
        Returns the mean loss (detached)."""
        n = len(micro_batches)
        total = torch.zeros(())
        for i, batch in enumerate(micro_batches):
            with torch.enable_grad(), gradient_sync(self.model, sync_last and i == n - 1):
                loss = loss_fn(batch)
                scaled = loss / n
                torch.autograd.backward(scaled if scaler is None else scaler.scale(scaled))
            total = total.to(loss.device) + loss.detach()
        return total / n

    def _synced_ascent(self) -> bool:
        """Whether the first pass's gradients are reduced across DDP replicas."""
        return self.sync_perturbation or self.between == "looksam"

    @torch.no_grad()
    def _unscale_finite(self, scaler: torch.amp.GradScaler) -> bool:
        """Divide the current gradients by the scale; whether they are all finite."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return True
        torch._foreach_mul_(grads, 1.0 / scaler.get_scale())
        return bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """SAM's state and param groups plus the base optimizer's state (momenta, Adam moments)
        and :attr:`sam_step` (where the cycle of ``every`` stands)."""
        sd = super().state_dict()
        sd["base_optimizer"] = self.base_optimizer.state_dict()
        sd["sam_step"] = self.sam_step
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "base_optimizer" not in state_dict:
            raise ValueError("not a mup2.SAM state dict: it lacks 'base_optimizer'")
        base = state_dict.pop("base_optimizer")
        self.sam_step = int(state_dict.pop("sam_step", 0))
        super().load_state_dict(state_dict)
        self.base_optimizer.load_state_dict(base)
        self.param_groups = self.base_optimizer.param_groups
        for i, group in enumerate(self.param_groups):
            for key in ("rule", "scaling", "eta"):  # state dicts from before they were saved
                group.setdefault(key, self.defaults[key])
            self._check_group(i, group)
        self._plan_key = None
