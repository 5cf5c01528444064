"""``mup2.roles``: the four roles, and ``Power``, the multiplier
``m_out**out * m_in**in_ * M**width``."""

from __future__ import annotations

import dataclasses
import math

import pytest

from mup2.roles import Power, Role


def _reference(p: Power, m_in: float, m_out: float, width: float) -> float:
    """``m_out**out * m_in**in_ * M**width`` through logarithms (an independent evaluation)."""
    return math.exp(p.out * math.log(m_out) + p.in_ * math.log(m_in) + p.width * math.log(width))


@pytest.mark.parametrize(
    ("out", "in_", "width"),
    [(0.0, 0.0, 0.0), (1.0, -1.0, 0.0), (0.0, -0.5, 0.0), (2.0, -2.0, -1.0), (0.5, 1.5, 0.25)],
)
@pytest.mark.parametrize(
    ("m_in", "m_out", "m"), [(1.0, 1.0, 1.0), (4.0, 2.0, 8.0), (0.25, 16.0, 3.0), (7.0, 0.5, 0.1)]
)
def test_power_is_the_product_of_the_three_powers(
    out: float, in_: float, width: float, m_in: float, m_out: float, m: float
) -> None:
    p = Power(out=out, in_=in_, width=width)
    got = p(m_in, m_out, m)
    assert isinstance(got, float)
    assert got == pytest.approx(_reference(p, m_in, m_out, m), rel=1e-13)


def test_argument_order_is_m_in_then_m_out_then_width() -> None:
    # exact in binary: the positional order cannot be confused
    assert Power(out=1.0)(2.0, 8.0) == 8.0
    assert Power(in_=1.0)(2.0, 8.0) == 2.0
    assert Power(width=1.0)(2.0, 8.0, 32.0) == 32.0
    assert Power(out=1.0, in_=-1.0)(4.0, 2.0) == 0.5  # r = m_out / m_in
    assert Power(out=1.0, in_=-0.5, width=-1.0)(4.0, 8.0, 2.0) == 2.0  # 8 * 4**-0.5 / 2
    assert Power(out=2.0, in_=-2.0, width=-1.0)(m_in=2.0, m_out=8.0, width=4.0) == 4.0


def test_default_power_and_default_width() -> None:
    assert Power() == Power(0.0, 0.0, 0.0)
    assert Power()(123.0, 0.01, 77.0) == 1.0
    # width defaults to M = 1, so a pure width power is 1 unless M is given
    assert Power(width=3.0)(5.0, 6.0) == 1.0
    assert Power(width=3.0)(5.0, 6.0, 2.0) == 8.0
    # integers are accepted and a float comes back
    assert Power(out=1.0, in_=-1.0)(2, 6) == 3.0
    assert type(Power(out=1.0)(2, 3)) is float


def test_power_is_frozen_and_hashable() -> None:
    p = Power(out=1.0, in_=-1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.out = 2.0  # type: ignore[misc]
    assert {p: "r"}[Power(out=1.0, in_=-1.0)] == "r"
    assert Power(out=1.0) != Power(in_=1.0)


def test_role_values() -> None:
    assert [r.value for r in Role] == ["input", "hidden", "output", "scalar"]
    assert Role("hidden") is Role.HIDDEN
    assert str(Role.OUTPUT) == "output" and f"{Role.INPUT}" == "input"
    assert isinstance(Role.SCALAR, str) and Role.SCALAR.upper() == "SCALAR"
    with pytest.raises(ValueError, match="'readout' is not a valid Role"):
        Role("readout")
