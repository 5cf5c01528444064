"""SAM rules as data: one :class:`Rule` per rule, in one table every caller asks.

Every rule is an instance of the one perturbation formula (``docs/math.md`` §3-4)::

    eps_W = rho_W**2 * c_W * A_W**2 * g_W / sqrt(sum_V rho_V**2 * s_V * ||A_V * g_V||**2)

A rule fixes the factor ``A`` (:class:`Factor`), which tensors it perturbs (by their
normalization flag and their :class:`mup2.roles.Role`) and, per perturbation scaling (``naive``,
``global``, ``mup2``, ``mup2-coupled``), the width factors ``c`` and ``s`` as
:class:`mup2.roles.Power` per role. LightSAM's rules replace ``A`` by an adaptive ascent
(:mod:`mup2.optim.lightsam`) and use only ``c``. The one-pass rules (:mod:`mup2.optim.onepass`,
``docs/math.md`` §8) replace the gradient: MSAM reads the base optimizer's momentum ``m`` and
perturbs along ``-m`` (the formula with ``g = m`` and the sign flipped), RWP draws Gaussian
noise, ``eps_W = rho_W c_W xi_W`` (no norm, only ``c``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from mup2.roles import Power, Role

__all__ = [
    "LIGHTSAM_RULES",
    "ONEPASS_RULES",
    "READOUT_ROLES",
    "RULES",
    "SCALINGS",
    "Factor",
    "PerturbScaling",
    "Rule",
    "get_rule",
]

SCALINGS = ("naive", "global", "mup2", "mup2-coupled")

#: The roles of the readout's tensors: its weight is output-like (fan_in grows) and its bias
#: scalar-like (its size is the number of classes). Together they are the tensors whose fan_out
#: does not grow with width; a readout tied to an embedding is input-like and not among them.
READOUT_ROLES: Final = frozenset({Role.OUTPUT, Role.SCALAR})


class Factor(StrEnum):
    """The factor ``A`` of the formula."""

    ONE = "one"  # SAM, SAM-ON: A = 1
    ELEMENTWISE = "elementwise"  # ASAM: A = |W| + eta, elementwise
    LAYERWISE = "layerwise"  # layerwise ASAM: A = ||W||_F + eta, one number per tensor
    ADAPTIVE = "adaptive"  # LightSAM: the ascent's own adaptive step size
    MOMENTUM = "momentum"  # MSAM: A = 1 on the base optimizer's momentum, ascent along -m
    NOISE = "noise"  # RWP: standard Gaussian noise xi, eps = rho c xi (no norm)


@dataclass(frozen=True)
class PerturbScaling:
    """Width factors of the formula: ``c`` (numerator) and ``s`` (denominator) per role."""

    c: Mapping[Role, Power]
    s: Mapping[Role, Power]


@dataclass(frozen=True)
class Rule:
    """One SAM rule.

    ``norm_only``: only tensors of normalization layers are perturbed (SAM-ON). ``roles``: only
    tensors of these roles are perturbed (``None``: every role); the others are left out of the
    perturbation and of its norm, as a group with ``rho = 0`` is. Such a rule needs param groups
    that carry their ``role`` (:meth:`mup2.Parametrization.param_groups`).
    ``offset_scales``: the scalings under which each tensor's offset ``eta`` is multiplied by
    its group's ``weight_scale`` (how its entries scale with width), so that ``|W| + eta`` keeps
    its meaning at every width. ``bucketed``: the scale ``k_W`` of ``eps_W = k_W d_W`` is
    proportional to ``rho_W**2 c_W`` (one multi-tensor call per bucket of equal ``(rho, c)``).
    ``lightsam``: the :class:`mup2.LightSAM` variant of a LightSAM rule (``None``: a
    :class:`mup2.SAM` rule); its optimizer family (:mod:`mup2.optim.families`) says whether
    it is SGD-like or Adam-like.
    """

    name: str
    label: str
    factor: Factor
    scalings: Mapping[str, PerturbScaling]
    norm_only: bool = False
    roles: frozenset[Role] | None = None
    offset_scales: frozenset[str] = frozenset()
    lightsam: str | None = None

    @property
    def bucketed(self) -> bool:
        return self.factor is not Factor.LAYERWISE

    @property
    def one_pass(self) -> bool:
        """A rule whose perturbation needs no gradient at ``w`` (MSAM, RWP): one
        forward/backward per step, at ``w + eps`` (:mod:`mup2.optim.onepass`)."""
        return self.factor in (Factor.MOMENTUM, Factor.NOISE)

    @property
    def reads_momentum(self) -> bool:
        """The perturbation follows the base optimizer's momentum (MSAM): the base optimizer
        must keep one (SGD with ``momentum > 0``, Adam-like)."""
        return self.factor is Factor.MOMENTUM

    def perturbs(self, norm: bool, role: Role | str) -> bool:
        """Whether a tensor of ``role`` (``norm``: of a normalization layer) is perturbed."""
        return (norm or not self.norm_only) and (self.roles is None or Role(role) in self.roles)

    def scaling(self, name: str) -> PerturbScaling:
        """The width factors under perturbation scaling ``name``."""
        if name not in SCALINGS:
            raise ValueError(
                f"unknown perturbation scaling {name!r}; choose one of {list(SCALINGS)}"
            )
        if name not in self.scalings:
            raise ValueError(
                f"scaling {name!r} is defined only for rules {_defined(name)}, not {self.name!r}"
            )
        return self.scalings[name]


def _same(p: Power) -> dict[Role, Power]:
    return dict.fromkeys(Role, p)


_ONE = Power()
# r = m_out / m_in, times D^(2a-1) inside the residual blocks of a depth-aware parametrization
# (D = L/L0, branches x D^-a; docs/math.md §9): a block's gradient scales like D^-a, so its
# perturbation c g ~ D^(a-1) matches its update (Adam: LR D^(a-1); SGD: LR D^(2a-1) x D^-a), and
# with s = c its share of the denominator, L D^(2a-1) D^-2a = L0, stays Θ(1). D = 1 elsewhere.
_IN_BLOCKS = {"depth": -1.0, "alpha": 2.0}  # D^(2a-1), for every gradient-following ascent
_R = Power(out=1.0, in_=-1.0, **_IN_BLOCKS)
_NAIVE = PerturbScaling(_same(_ONE), _same(_ONE))
_GLOBAL = PerturbScaling(_same(Power(width=-0.5)), _same(_ONE))
_LAYERWISE_R = PerturbScaling(_same(_R), _same(_R))
_COUPLED = PerturbScaling(
    _same(_R), _same(Power(out=2.0, in_=-2.0, width=-1.0, depth=-2.0, alpha=4.0))
)
# The mup2 rows are the layerwise fixes; the coordinate check (mup2.coordcheck, docs/table1.md)
# is the arbiter of whether each row perturbs every layer effectively. With c = s = k the
# effective perturbation of W is ~ k_W T_W / sqrt(sum k_V T_V), T_W = ||A_W g_W||^2, so each k_W
# must cancel the width dependence of its T_W:
# - asam: T ~ 1/M for every width-scaled tensor but Θ(1) for scalar-like ones (the readout bias),
#   hence k = M except on scalars. The note's global x M^1/2 (= k = M everywhere) let the readout
#   bias take over the norm: output slope +0.32 vs -0.06 now (eta=0, widths 64..4096). A fixed
#   eta still breaks it once eta > |W| (output for n > ~400 at base 64): eta must scale like W.
# - asam-layerwise: T ~ M for hidden tensors, Θ(1) for the rest, hence k = 1/M on hidden ones.
#   The note's x M on input/output tensors is this times M, so every layer grew: slopes
#   +0.47..+0.51 before, -0.03..+0.01 now (widths 64..4096, eta=0.01).
# - LightSAM: AdaGrad-Norm divides by one accumulator, sqrt(eps0^2 + sum_t sum_V s_V ||g_V||^2):
#   SGD-like, so SAM's row applies. The elementwise variants (AdaGrad, Adam) normalize each
#   coordinate, so their ascent scales like an Adam update: c = 1/m_in, as μP's Adam LR.
# - ASAM (both): T_W = |W| + eta (or ||W||) does not change with depth (the blocks' weights keep
#   their init; the branch multiplier acts on the output), so A_W g_W ~ D^-a as for SAM: SAM's
#   D^(2a-1) in the blocks, on c and s alike.
_ASAM = {**_same(Power(width=1.0, **_IN_BLOCKS)), Role.SCALAR: Power(**_IN_BLOCKS)}
_ASAM_MUP2 = PerturbScaling(_ASAM, _ASAM)
_ASAM_LAYERWISE = {**_same(Power(**_IN_BLOCKS)), Role.HIDDEN: Power(width=-1.0, **_IN_BLOCKS)}
_ASAM_LAYERWISE_MUP2 = PerturbScaling(_ASAM_LAYERWISE, _ASAM_LAYERWISE)
# (in the blocks of a depth-aware parametrization x D^(a-1), as Adam's LR: docs/math.md §9)
_ADAM_LIKE = PerturbScaling(_same(Power(in_=-1.0, depth=-1.0, alpha=1.0)), _same(_ONE))
# - RWP: eps_W = rho c_W xi_W with xi ~ N(0, 1) entrywise, independent of the layer's input x,
#   so the effective perturbation eps_W x has RMS rho c_W sqrt(fan_in) RMS(x): c = m_in^-1/2
#   (1 on input-like, scalar-like and norm tensors, whose fan_in does not grow). The noise does
#   not follow the gradient, so in the blocks it takes the update's depth factor, D^(a-1) (1
#   under CompleteP), not SAM's D^(2a-1).
_RWP_MUP2 = PerturbScaling(_same(Power(in_=-0.5, depth=-1.0, alpha=1.0)), _same(_ONE))
_BASIC = {"naive": _NAIVE, "global": _GLOBAL}

_TABLE: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule(
            "sam",
            "SAM",
            Factor.ONE,
            {**_BASIC, "mup2": _LAYERWISE_R, "mup2-coupled": _COUPLED},
        ),
        Rule(
            "asam",
            "elementwise ASAM",
            Factor.ELEMENTWISE,
            {**_BASIC, "mup2": _ASAM_MUP2},
            offset_scales=frozenset({"mup2"}),
        ),
        Rule(
            "asam-layerwise",
            "layerwise ASAM",
            Factor.LAYERWISE,
            {**_BASIC, "mup2": _ASAM_LAYERWISE_MUP2},
        ),
        # Norm parameters all have r = M, so mup2 is the note's global x M^1/2 for SAM-ON.
        Rule(
            "sam-on",
            "SAM-ON",
            Factor.ONE,
            {**_BASIC, "mup2": _LAYERWISE_R, "mup2-coupled": _COUPLED},
            norm_only=True,
        ),
        # The control of the mechanism (docs/sam.md): under SP-naive, as width grows, SAM's
        # perturbation concentrates on the readout; this rule perturbs the readout alone at every
        # width. Its mup2 row is SAM's restricted to the readout: each of its tensors' effective
        # perturbation is then Θ(1) at every width, as under μP² (docs/table1.md).
        Rule(
            "sam-readout",
            "readout-only SAM",
            Factor.ONE,
            {**_BASIC, "mup2": _LAYERWISE_R},
            roles=READOUT_ROLES,
        ),
        Rule(
            "lightsam-adagrad-norm",
            "LightSAM AdaGrad-Norm",
            Factor.ADAPTIVE,
            {**_BASIC, "mup2": _LAYERWISE_R},
            lightsam="adagrad-norm",
        ),
        Rule(
            "lightsam-adagrad",
            "LightSAM AdaGrad",
            Factor.ADAPTIVE,
            {**_BASIC, "mup2": _ADAM_LIKE},
            lightsam="adagrad",
        ),
        Rule(
            "lightsam-adam",
            "LightSAM Adam",
            Factor.ADAPTIVE,
            {**_BASIC, "mup2": _ADAM_LIKE},
            lightsam="adam",
        ),
        # MSAM's momentum is a decaying sum of past gradients, which scale like g: SAM's rows.
        Rule("msam", "MSAM", Factor.MOMENTUM, {**_BASIC, "mup2": _LAYERWISE_R}),
        Rule("rwp", "RWP", Factor.NOISE, {**_BASIC, "mup2": _RWP_MUP2}),
    )
}

#: The rules of :class:`mup2.SAM`, of :class:`mup2.LightSAM` and of the one-pass optimizers
#: (:class:`mup2.MSAM`, :class:`mup2.RWP`), by name.
RULES = tuple(name for name, r in _TABLE.items() if r.lightsam is None and not r.one_pass)
LIGHTSAM_RULES = tuple(name for name, r in _TABLE.items() if r.lightsam is not None)
ONEPASS_RULES = tuple(name for name, r in _TABLE.items() if r.one_pass)


def _defined(scaling: str) -> str:
    names = [repr(name) for name, r in _TABLE.items() if scaling in r.scalings]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def get_rule(rule: str | Rule) -> Rule:
    """Look a rule up by name (see :data:`RULES`, :data:`LIGHTSAM_RULES`, :data:`ONEPASS_RULES`)."""
    if isinstance(rule, Rule):
        return rule
    if rule not in _TABLE:
        raise ValueError(f"unknown SAM rule {rule!r}; choose one of {list(_TABLE)}")
    return _TABLE[rule]
