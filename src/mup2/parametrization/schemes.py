"""Parametrization schemes as data: init and LR multipliers per role (``docs/math.md`` §2).

Every multiplier is a :class:`mup2.roles.Power` of the tensor's ``m_out`` and ``m_in``, relative
to the base model, so at base width every scheme is the base model. The perturbation scalings
(naive, global, μP²) belong to the SAM rules: :mod:`mup2.optim.rules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mup2.errors import shown
from mup2.roles import Power, Role

__all__ = [
    "MUP_ADAM",
    "MUP_MUON",
    "MUP_SGD",
    "SCHEMES",
    "SP",
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
class Scheme:
    """A named parametrization: one :class:`RoleRule` per role, plus two forward-pass rules.

    ``tied_readout`` is the forward multiplier of the readout use of an embedding tied to it
    (the tensor stays input-like; ``None``: nothing installed). ``attention`` is the exponent
    ``a`` of the attention-logit scale ``s(d) = s(d_base) * (d_base / d)**a`` when the head
    dimension ``d`` grows (μP: ``a = 1``, i.e. ``1/d_head``; ``None``: the model as built).
    ``like``: the optimizer kind whose updates the LR multipliers fit (``"sgd"``, ``"adam"``,
    ``"muon"``; ``None``: any, as SP), matched against :class:`mup2.optim.Family` ``.like``.
    """

    name: str
    roles: Mapping[Role, RoleRule]
    description: str
    tied_readout: Power | None = None
    attention: float | None = None
    like: str | None = None

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
    like="sgd",
)
MUP_ADAM = Scheme(
    "mup-adam",
    {role: RoleRule(init=_MUP_INIT[role], lr=_ADAM_LR) for role in Role},
    "μP for Adam-like optimizers: LR x 1/m_in, hidden init x m_in^-1/2, output init x 1/m_in",
    tied_readout=Power(in_=-1.0),
    attention=1.0,
    like="adam",
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
