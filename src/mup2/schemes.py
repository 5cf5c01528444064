"""Parametrizations and perturbation scalings as data (math note, sections 2 and 4).

Every multiplier is a :class:`Power` of the tensor's ``m_out`` and ``m_in`` (and, for global
perturbation scalings, of the model's width multiplier ``M``), relative to the base model, so at
base width every scheme and every scaling reduces to the base model with plain SAM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mup2.shapes import Role

__all__ = [
    "LIGHTSAM_RULES",
    "MUP_ADAM",
    "MUP_SGD",
    "RULES",
    "SCALINGS",
    "SCHEMES",
    "SP",
    "PerturbScaling",
    "Power",
    "RoleRule",
    "Scheme",
    "get_scheme",
    "perturb_scaling",
]


@dataclass(frozen=True)
class Power:
    """The multiplier ``m_out**out * m_in**in_ * M**width``; ``M``: the model's width multiplier."""

    out: float = 0.0
    in_: float = 0.0
    width: float = 0.0

    def __call__(self, m_in: float, m_out: float, width: float = 1.0) -> float:
        return float(m_out**self.out * m_in**self.in_ * width**self.width)


@dataclass(frozen=True)
class RoleRule:
    """Multipliers for one role.

    ``init`` scales the base model's init std (``None``: PyTorch's default at the current width,
    i.e. the model as it would be built); ``lr`` scales the learning rate.
    """

    init: Power | None
    lr: Power


@dataclass(frozen=True)
class Scheme:
    """A named parametrization: one :class:`RoleRule` per role, plus two forward-pass rules.

    ``tied_readout`` is the forward multiplier of the readout use of an embedding tied to it
    (the tensor stays input-like; ``None``: nothing installed). ``attention`` is the exponent
    ``a`` of the attention-logit scale ``s(d) = s(d_base) * (d_base / d)**a`` when the head
    dimension ``d`` grows (μP: ``a = 1``, i.e. ``1/d_head``; ``None``: the model as built).
    """

    name: str
    roles: Mapping[Role, RoleRule]
    description: str
    tied_readout: Power | None = None
    attention: float | None = None

    def init_mult(self, role: Role, m_in: float, m_out: float) -> float | None:
        rule = self.roles[role].init
        return None if rule is None else rule(m_in, m_out)

    def lr_mult(self, role: Role, m_in: float, m_out: float) -> float:
        return self.roles[role].lr(m_in, m_out)


_ONE = Power()
_SGD_LR = Power(out=1.0, in_=-1.0)  # m_out / m_in
_ADAM_LR = Power(in_=-1.0)  # 1 / m_in
_MUP_INIT = {
    Role.INPUT: _ONE,
    Role.HIDDEN: Power(in_=-0.5),
    Role.OUTPUT: Power(in_=-1.0),
    Role.SCALAR: _ONE,
}

SP = Scheme(
    "sp",
    {role: RoleRule(init=None, lr=_ONE) for role in Role},
    "standard parametrization: PyTorch's default init, one global learning rate",
)
MUP_SGD = Scheme(
    "mup-sgd",
    {role: RoleRule(init=_MUP_INIT[role], lr=_SGD_LR) for role in Role},
    "μP for SGD-like optimizers: LR x m_out/m_in, hidden init x m_in^-1/2, output init x 1/m_in",
    tied_readout=Power(in_=-1.0),
    attention=1.0,
)
MUP_ADAM = Scheme(
    "mup-adam",
    {role: RoleRule(init=_MUP_INIT[role], lr=_ADAM_LR) for role in Role},
    "μP for Adam-like optimizers: LR x 1/m_in, hidden init x m_in^-1/2, output init x 1/m_in",
    tied_readout=Power(in_=-1.0),
    attention=1.0,
)

SCHEMES: dict[str, Scheme] = {s.name: s for s in (SP, MUP_SGD, MUP_ADAM)}

RULES = ("sam", "asam", "asam-layerwise", "sam-on")
SCALINGS = ("naive", "global", "mup2", "mup2-coupled")


@dataclass(frozen=True)
class PerturbScaling:
    """Width factors of the one perturbation formula (see :mod:`mup2.perturb`)::

        eps_W = rho_W**2 * c_W * A_W**2 * g_W / sqrt(sum_V rho_V**2 * s_V * ||A_V * g_V||**2)

    ``c`` (numerator) and ``s`` (denominator) are per-role powers; ``A`` is the rule's factor.
    """

    c: Mapping[Role, Power]
    s: Mapping[Role, Power]


def _same(p: Power) -> dict[Role, Power]:
    return dict.fromkeys(Role, p)


_R = Power(out=1.0, in_=-1.0)  # r = m_out / m_in
_NAIVE = PerturbScaling(_same(_ONE), _same(_ONE))
_LAYERWISE_R = PerturbScaling(_same(_R), _same(_R))
# (rule, scaling) -> factors. The mup2 rows are the layerwise fixes; the coordinate check
# (mup2.coordcheck, docs/table1.md) is the arbiter of whether each row perturbs every layer
# effectively. With c = s = k the effective perturbation of W is ~ k_W T_W / sqrt(sum k_V T_V),
# T_W = ||A_W g_W||^2, so each k_W must cancel the width dependence of its T_W:
# - asam: T ~ 1/M for every width-scaled tensor but Θ(1) for scalar-like ones (the readout bias),
#   hence k = M except on scalars. The note's global x M^1/2 (= k = M everywhere) let the readout
#   bias take over the norm: output slope +0.32 vs -0.06 now (eta=0, widths 64..4096). A fixed
#   eta still breaks it once eta > |W| (output for n > ~400 at base 64): eta must scale like W.
# - asam-layerwise: T ~ M for hidden tensors, Θ(1) for the rest, hence k = 1/M on hidden ones.
#   The note's x M on input/output tensors is this times M, so every layer grew: slopes
#   +0.47..+0.51 before, -0.03..+0.01 now (widths 64..4096, eta=0.01).
_PERTURB: dict[tuple[str, str], PerturbScaling] = {
    **{(rule, "naive"): _NAIVE for rule in RULES},
    **{(rule, "global"): PerturbScaling(_same(Power(width=-0.5)), _same(_ONE)) for rule in RULES},
    ("sam", "mup2"): _LAYERWISE_R,
    # Norm parameters all have r = M, so this is the note's global x M^1/2 for SAM-ON.
    ("sam-on", "mup2"): _LAYERWISE_R,
    ("asam", "mup2"): PerturbScaling(
        {**_same(Power(width=1.0)), Role.SCALAR: _ONE},
        {**_same(Power(width=1.0)), Role.SCALAR: _ONE},
    ),
    ("asam-layerwise", "mup2"): PerturbScaling(
        {**_same(_ONE), Role.HIDDEN: Power(width=-1.0)},
        {**_same(_ONE), Role.HIDDEN: Power(width=-1.0)},
    ),
    ("sam", "mup2-coupled"): PerturbScaling(_same(_R), _same(Power(out=2.0, in_=-2.0, width=-1.0))),
    ("sam-on", "mup2-coupled"): PerturbScaling(
        _same(_R), _same(Power(out=2.0, in_=-2.0, width=-1.0))
    ),
}


LIGHTSAM_RULES = ("lightsam-adagrad-norm", "lightsam-adagrad", "lightsam-adam")
# LightSAM (mup2.lightsam): eps_W = rho_W * c_W * (adaptive ascent of W). AdaGrad-Norm divides
# by one accumulator, sqrt(eps0^2 + sum_t sum_V s_V ||g_V||^2): SGD-like, so SAM's row applies.
# The elementwise variants (AdaGrad, Adam) normalize each coordinate, so their ascent scales like
# an Adam update: c = 1/m_in, as μP's Adam learning rate (s is unused).
_ADAM_LIKE = PerturbScaling(_same(Power(in_=-1.0)), _same(_ONE))
_PERTURB.update(
    {
        **{(rule, "naive"): _NAIVE for rule in LIGHTSAM_RULES},
        **{
            (rule, "global"): PerturbScaling(_same(Power(width=-0.5)), _same(_ONE))
            for rule in LIGHTSAM_RULES
        },
        ("lightsam-adagrad-norm", "mup2"): _LAYERWISE_R,
        ("lightsam-adagrad", "mup2"): _ADAM_LIKE,
        ("lightsam-adam", "mup2"): _ADAM_LIKE,
    }
)


def perturb_scaling(rule: str, scaling: str) -> PerturbScaling:
    """The width factors for a SAM or LightSAM rule under a perturbation scaling."""
    if rule not in RULES + LIGHTSAM_RULES:
        raise ValueError(f"unknown SAM rule {rule!r}; choose one of {list(RULES)}")
    if scaling not in SCALINGS:
        raise ValueError(
            f"unknown perturbation scaling {scaling!r}; choose one of {list(SCALINGS)}"
        )
    if (rule, scaling) not in _PERTURB:
        raise ValueError(
            f"scaling {scaling!r} is defined only for rules 'sam' and 'sam-on', not {rule!r}"
        )
    return _PERTURB[(rule, scaling)]


def get_scheme(scheme: str | Scheme) -> Scheme:
    """Look a scheme up by name (``sp``, ``mup-sgd``, ``mup-adam``; ``mup`` means ``mup-sgd``)."""
    if isinstance(scheme, Scheme):
        return scheme
    key = "mup-sgd" if scheme == "mup" else scheme
    if key not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {sorted(SCHEMES)} or 'mup'")
    return SCHEMES[key]
