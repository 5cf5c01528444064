"""Parametrization schemes as data: init and LR multipliers per role (``docs/math.md`` §2).

Every multiplier is a :class:`mup2.roles.Power` of the tensor's ``m_out`` and ``m_in``, relative
to the base model, so at base width every scheme is the base model. The perturbation scalings
(naive, global, μP²) belong to the SAM rules: :mod:`mup2.optim.rules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mup2.errors import shown
from mup2.roles import Power, Role

__all__ = [
    "ADAM_DEPTH",
    "MUON_DEPTH",
    "MUP_ADAM",
    "MUP_MUON",
    "MUP_SGD",
    "SCHEMES",
    "SGD_DEPTH",
    "SP",
    "DepthRule",
    "RoleRule",
    "Scheme",
    "get_scheme",
]


@dataclass(frozen=True)
class RoleRule:
    """Multipliers for one role.

    ``init`` scales the base model's init std (``None``: PyTorch's default at the current width,
    i.e. the model as it would be built); ``lr`` scales the learning rate.
    """

    init: Power | None
    lr: Power


@dataclass(frozen=True)
class DepthRule:
    """What a depth-aware parametrization (CompleteP, ``docs/math.md``, depth) adds for one role:
    multipliers of the LR, of Adam's ``eps`` and of the weight decay, each a :class:`Power` of
    the fans and of ``D = L/L0`` (1 outside the residual blocks) with the branch exponent
    ``alpha``. They apply only when the model is parametrized against a base of another depth
    (or with ``base_depth=``); the width parts of ``eps`` and weight decay with them."""

    lr: Power = field(default_factory=Power)
    eps: Power = field(default_factory=Power)
    wd: Power = field(default_factory=Power)


@dataclass(frozen=True)
class Scheme:
    """A named parametrization: one :class:`RoleRule` per role, plus two forward-pass rules.

    ``tied_readout`` is the forward multiplier of the readout use of an embedding tied to it
    (the tensor stays input-like; ``None``: nothing installed). ``attention`` is the exponent
    ``a`` of the attention-logit scale ``s(d) = s(d_base) * (d_base / d)**a`` when the head
    dimension ``d`` grows (μP: ``a = 1``, i.e. ``1/d_head``; ``None``: the model as built).
    ``like``: the optimizer kind whose updates the LR multipliers fit (``"sgd"``, ``"adam"``,
    ``"muon"``; ``None``: any, as SP), matched against :class:`mup2.optim.Family` ``.like``.
    ``depth``: the :class:`DepthRule` per role applied against a base of another depth
    (``None``: the scheme has none, as SP).
    """

    name: str
    roles: Mapping[Role, RoleRule]
    description: str
    tied_readout: Power | None = None
    attention: float | None = None
    like: str | None = None
    depth: Mapping[Role, DepthRule] | None = None

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

# Depth (``docs/math.md``, depth): each block's branch is multiplied by D^-a (D = L/L0). Inside a
# block a normalized update (Adam, Muon) moves the branch's features by its LR, a gradient step
# (SGD) by LR x D^-a; the blocks' summed contribution to the residual stream stays Θ(1) when
# the features move by D^(a-1): Adam LR x D^(a-1), SGD LR x D^(2a-1). Adam's eps follows the
# gradient's size (1/m_in for hidden matrices, D^-a in the blocks); weight decay keeps
# lr x wd fixed (CompleteP: x m_in for hidden matrices under Adam).
_IN_BLOCK_ADAM = DepthRule(
    lr=Power(depth=-1.0, alpha=1.0),
    eps=Power(alpha=-1.0),
    wd=Power(depth=1.0, alpha=-1.0),
)
ADAM_DEPTH: dict[Role, DepthRule] = {
    Role.INPUT: _IN_BLOCK_ADAM,  # in a block: biases and norm gains
    Role.HIDDEN: DepthRule(
        lr=Power(depth=-1.0, alpha=1.0),
        eps=Power(in_=-1.0, alpha=-1.0),
        wd=Power(in_=1.0, depth=1.0, alpha=-1.0),
    ),
    Role.OUTPUT: DepthRule(),  # the readout is outside the blocks
    Role.SCALAR: _IN_BLOCK_ADAM,
}
_IN_BLOCK_SGD = DepthRule(lr=Power(depth=-1.0, alpha=2.0), wd=Power(depth=1.0, alpha=-2.0))
SGD_DEPTH: dict[Role, DepthRule] = {
    Role.INPUT: _IN_BLOCK_SGD,
    Role.HIDDEN: _IN_BLOCK_SGD,
    Role.OUTPUT: DepthRule(),
    Role.SCALAR: _IN_BLOCK_SGD,
}
#: Muon's hidden matrices: a normalized update (Adam's depth LR); its ``eps`` is Newton-Schulz's
#: (no multiplier); decay x m_in^1/2 keeps lr x wd fixed under its m_in^-1/2 LR.
MUON_DEPTH: dict[Role, DepthRule] = {
    **ADAM_DEPTH,
    Role.HIDDEN: DepthRule(
        lr=Power(depth=-1.0, alpha=1.0), wd=Power(in_=0.5, depth=1.0, alpha=-1.0)
    ),
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
    like="sgd",
    depth=SGD_DEPTH,
)
MUP_ADAM = Scheme(
    "mup-adam",
    {role: RoleRule(init=_MUP_INIT[role], lr=_ADAM_LR) for role in Role},
    "μP for Adam-like optimizers: LR x 1/m_in, hidden init x m_in^-1/2, output init x 1/m_in",
    tied_readout=Power(in_=-1.0),
    attention=1.0,
    like="adam",
    depth=ADAM_DEPTH,
)
#: μP for :class:`mup2.optim.MuonAdamW`: Muon's hidden matrices follow the spectral condition
#: under ``adjust_lr_fn="match_rms_adamw"`` (``lr x m^-1/2``, see :mod:`mup2.optim.muon`), the
#: AdamW tensors (input-like, output-like, scalar-like) μP-Adam's ``1/m_in``.
MUP_MUON = Scheme(
    "mup-muon",
    {
        role: RoleRule(
            init=_MUP_INIT[role], lr=Power(in_=-0.5) if role is Role.HIDDEN else _ADAM_LR
        )
        for role in Role
    },
    "μP for Muon (hidden matrices, adjust_lr_fn='match_rms_adamw') with AdamW elsewhere: hidden "
    "LR x m_in^-1/2, others x 1/m_in; init as μP",
    tied_readout=Power(in_=-1.0),
    attention=1.0,
    like="muon",
    depth=MUON_DEPTH,
)

SCHEMES: dict[str, Scheme] = {s.name: s for s in (SP, MUP_SGD, MUP_ADAM, MUP_MUON)}


def get_scheme(scheme: str | Scheme) -> Scheme:
    """Look a scheme up by name (``sp``, ``mup-sgd``, ``mup-adam``, ``mup-muon``; ``mup`` means
    ``mup-sgd``)."""
    if isinstance(scheme, Scheme):
        return scheme
    if not isinstance(scheme, str):
        raise TypeError(
            f"scheme must be a scheme name ({', '.join(SCHEMES)} or mup) or a Scheme, got "
            f"{shown(scheme)}"
        )
    key = "mup-sgd" if scheme == "mup" else scheme
    if key not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {sorted(SCHEMES)} or 'mup'")
    return SCHEMES[key]
