"""``mup2.parametrization.schemes``: SP and μP (SGD, Adam) multipliers per role, against the table
of ``docs/parametrization.md``::

    scheme    init (input, hidden, output)  LR
    sp        PyTorch's default             1
    mup-sgd   1, m_in^-1/2, 1/m_in          m_out/m_in
    mup-adam  1, m_in^-1/2, 1/m_in          1/m_in
    mup-muon  1, m_in^-1/2, 1/m_in          hidden (Muon) m_in^-1/2, others (AdamW) 1/m_in
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest

from mup2.parametrization.schemes import (
    MUP_ADAM,
    MUP_MUON,
    MUP_SGD,
    SCHEMES,
    SP,
    RoleRule,
    Scheme,
    get_scheme,
)
from mup2.roles import Power, Role

# (m_in, m_out): base width, every role's own fans at width multiplier 4, and unequal fans
FANS = [(1.0, 1.0), (1.0, 4.0), (4.0, 4.0), (4.0, 1.0), (2.0, 8.0), (0.5, 3.0)]

Mult = Callable[[float, float], float]

# the μP init multiplier of each role, written out from the table
MUP_INIT: dict[Role, Mult] = {
    Role.INPUT: lambda m_in, m_out: 1.0,
    Role.HIDDEN: lambda m_in, m_out: 1.0 / math.sqrt(m_in),
    Role.OUTPUT: lambda m_in, m_out: 1.0 / m_in,
    Role.SCALAR: lambda m_in, m_out: 1.0,
}
LR: dict[str, Mult] = {
    "sp": lambda m_in, m_out: 1.0,
    "mup-sgd": lambda m_in, m_out: m_out / m_in,
    "mup-adam": lambda m_in, m_out: 1.0 / m_in,
}
# Muon's hidden matrices under adjust_lr_fn="match_rms_adamw": ||dW||_2 = 0.2 lr sqrt(max fan)
# must stay Θ(1) when both fans grow by m, so lr x m^-1/2; the AdamW tensors as mup-adam
MUON_LR: dict[Role, Mult] = {
    Role.INPUT: lambda m_in, m_out: 1.0 / m_in,
    Role.HIDDEN: lambda m_in, m_out: 1.0 / math.sqrt(m_in),
    Role.OUTPUT: lambda m_in, m_out: 1.0 / m_in,
    Role.SCALAR: lambda m_in, m_out: 1.0 / m_in,
}


def test_registry() -> None:
    assert list(SCHEMES) == ["sp", "mup-sgd", "mup-adam", "mup-muon"]
    assert SCHEMES["sp"] is SP and SCHEMES["mup-sgd"] is MUP_SGD and SCHEMES["mup-adam"] is MUP_ADAM
    assert SCHEMES["mup-muon"] is MUP_MUON
    assert [s.like for s in SCHEMES.values()] == [None, "sgd", "adam", "muon"]
    for scheme in SCHEMES.values():
        assert set(scheme.roles) == set(Role)
        assert all(isinstance(rule, RoleRule) for rule in scheme.roles.values())


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(("m_in", "m_out"), FANS)
def test_sp_keeps_pytorch_init_and_one_learning_rate(role: Role, m_in: float, m_out: float) -> None:
    assert SP.roles[role].init is None
    assert SP.init_mult(role, m_in, m_out) is None
    assert SP.lr_mult(role, m_in, m_out) == 1.0


@pytest.mark.parametrize("scheme", [MUP_SGD, MUP_ADAM], ids=lambda s: s.name)
@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(("m_in", "m_out"), FANS)
def test_mup_multipliers_follow_the_table(
    scheme: Scheme, role: Role, m_in: float, m_out: float
) -> None:
    init = scheme.init_mult(role, m_in, m_out)
    assert init is not None
    assert init == pytest.approx(MUP_INIT[role](m_in, m_out), rel=1e-15)
    assert scheme.lr_mult(role, m_in, m_out) == pytest.approx(
        LR[scheme.name](m_in, m_out), rel=1e-15
    )


@pytest.mark.parametrize("scheme", list(SCHEMES.values()), ids=lambda s: s.name)
def test_every_scheme_is_the_base_model_at_base_width(scheme: Scheme) -> None:
    for role in Role:
        assert scheme.lr_mult(role, 1.0, 1.0) == 1.0
        assert scheme.init_mult(role, 1.0, 1.0) in (None, 1.0)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(("m_in", "m_out"), FANS)
def test_mup_muon_multipliers(role: Role, m_in: float, m_out: float) -> None:
    assert MUP_MUON.init_mult(role, m_in, m_out) == pytest.approx(MUP_INIT[role](m_in, m_out))
    assert MUP_MUON.lr_mult(role, m_in, m_out) == pytest.approx(MUON_LR[role](m_in, m_out))
    assert MUP_MUON.tied_readout == MUP_ADAM.tied_readout and MUP_MUON.attention == 1.0


def test_mup_at_width_multiplier_m() -> None:
    """Each role at its own fans (input: (1, m), hidden: (m, m), output: (m, 1)), m = 16."""
    m = 16.0
    fans = {Role.INPUT: (1.0, m), Role.HIDDEN: (m, m), Role.OUTPUT: (m, 1.0), Role.SCALAR: (1, 1)}
    sgd = {r: MUP_SGD.lr_mult(r, *f) for r, f in fans.items()}
    adam = {r: MUP_ADAM.lr_mult(r, *f) for r, f in fans.items()}
    init = {r: MUP_SGD.init_mult(r, *f) for r, f in fans.items()}
    assert sgd == {Role.INPUT: 16.0, Role.HIDDEN: 1.0, Role.OUTPUT: 1 / 16, Role.SCALAR: 1.0}
    assert adam == {Role.INPUT: 1.0, Role.HIDDEN: 1 / 16, Role.OUTPUT: 1 / 16, Role.SCALAR: 1.0}
    assert init == {Role.INPUT: 1.0, Role.HIDDEN: 0.25, Role.OUTPUT: 1 / 16, Role.SCALAR: 1.0}
    # the two μP schemes share their init, and differ only in the LR
    assert {r: MUP_ADAM.roles[r].init for r in Role} == {r: MUP_SGD.roles[r].init for r in Role}


def test_tied_readout_and_attention() -> None:
    assert SP.tied_readout is None and SP.attention is None
    for scheme in (MUP_SGD, MUP_ADAM):
        assert scheme.tied_readout == Power(in_=-1.0)
        assert scheme.tied_readout is not None
        # the readout use of a tied embedding: m_in of the use grows, 1/m_in
        assert scheme.tied_readout(8.0, 1.0) == 0.125
        assert scheme.attention == 1.0


def test_get_scheme() -> None:
    assert get_scheme("mup") is MUP_SGD
    assert get_scheme("mup-sgd") is MUP_SGD
    assert get_scheme("mup-adam") is MUP_ADAM
    assert get_scheme("sp") is SP
    custom = dataclasses.replace(SP, name="mine")
    assert get_scheme(custom) is custom


@pytest.mark.parametrize("name", ["mup-lamb", "MUP", "", "SP"])
def test_unknown_scheme_lists_the_choices(name: str) -> None:
    with pytest.raises(ValueError) as err:
        get_scheme(name)
    assert str(err.value) == (
        f"unknown scheme {name!r}; choose one of ['mup-adam', 'mup-muon', 'mup-sgd', 'sp'] or 'mup'"
    )


def test_schemes_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        MUP_SGD.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        MUP_SGD.roles[Role.HIDDEN].lr = Power()  # type: ignore[misc]
