"""The rule table: every rule's factors, what it perturbs, and its scalings' width factors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mup2.optim.rules import (
    LIGHTSAM_RULES,
    ONEPASS_RULES,
    READOUT_ROLES,
    RULES,
    SCALINGS,
    Factor,
    get_rule,
)
from mup2.roles import Role

SRC = Path(__file__).resolve().parents[2] / "src" / "mup2"

# (m_in, m_out) of each role for a tensor of width multiplier m
_FANS = {
    Role.INPUT: lambda m: (1.0, m),
    Role.HIDDEN: lambda m: (m, m),
    Role.OUTPUT: lambda m: (m, 1.0),
    Role.SCALAR: lambda m: (1.0, 1.0),
}


def test_the_table_partitions_into_sam_and_lightsam_rules() -> None:
    assert RULES == ("sam", "asam", "asam-layerwise", "sam-on", "sam-readout")
    assert LIGHTSAM_RULES == ("lightsam-adagrad-norm", "lightsam-adagrad", "lightsam-adam")
    assert all(get_rule(r).lightsam is None for r in RULES)
    assert [get_rule(r).lightsam for r in LIGHTSAM_RULES] == ["adagrad-norm", "adagrad", "adam"]
    labels = [get_rule(r).label for r in (*RULES, *LIGHTSAM_RULES)]
    assert len(set(labels)) == len(labels)


def test_factors_and_what_each_rule_perturbs() -> None:
    assert get_rule("sam").factor is Factor.ONE and get_rule("sam-on").factor is Factor.ONE
    assert get_rule("asam").factor is Factor.ELEMENTWISE
    assert get_rule("asam-layerwise").factor is Factor.LAYERWISE
    assert {get_rule(r).factor for r in LIGHTSAM_RULES} == {Factor.ADAPTIVE}
    assert [get_rule(r).bucketed for r in RULES] == [True, True, False, True, True]
    sam_on = get_rule("sam-on")
    for role in Role:
        assert sam_on.perturbs(True, role) and not sam_on.perturbs(False, role)
        assert get_rule("sam").perturbs(False, role) and get_rule("sam").perturbs(True, role)
    assert all(get_rule(r).roles is None for r in (*RULES, *LIGHTSAM_RULES) if r != "sam-readout")
    assert get_rule("asam").offset_scales == {"mup2"}
    assert all(not get_rule(r).offset_scales for r in RULES if r != "asam")


@pytest.mark.parametrize("rule", [*RULES, *LIGHTSAM_RULES])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_every_scaling_is_plain_sam_at_base_width(rule: str, scaling: str) -> None:
    r = get_rule(rule)
    if scaling not in r.scalings:
        with pytest.raises(ValueError, match=f"scaling {scaling!r} is defined only for rules"):
            r.scaling(scaling)
        return
    table = r.scaling(scaling)
    for role in Role:
        assert table.c[role](1.0, 1.0, 1.0) == 1.0 and table.s[role](1.0, 1.0, 1.0) == 1.0


@pytest.mark.parametrize("m", [0.25, 4.0, 16.0])
def test_width_factors_at_width_multiplier_m(m: float) -> None:
    """The math note's rows (§4) and the coordinate-check fixes documented in rules.py."""
    for role, fans in _FANS.items():
        m_in, m_out = fans(m)
        args = (m_in, m_out, m)
        sam = get_rule("sam")
        assert sam.scaling("naive").c[role](*args) == 1.0
        assert sam.scaling("global").c[role](*args) == pytest.approx(m**-0.5)
        assert sam.scaling("global").s[role](*args) == 1.0
        mup2 = sam.scaling("mup2")
        assert mup2.c[role](*args) == pytest.approx(m_out / m_in)
        assert mup2.s[role](*args) == pytest.approx(m_out / m_in)
        coupled = sam.scaling("mup2-coupled")
        assert coupled.s[role](*args) == pytest.approx((m_out / m_in) ** 2 / m)
        asam = get_rule("asam").scaling("mup2")
        assert asam.c[role](*args) == pytest.approx(1.0 if role is Role.SCALAR else m)
        layerwise = get_rule("asam-layerwise").scaling("mup2")
        assert layerwise.c[role](*args) == pytest.approx(1 / m if role is Role.HIDDEN else 1.0)
        adam = get_rule("lightsam-adam").scaling("mup2")
        assert adam.c[role](*args) == pytest.approx(1 / m_in)
        assert get_rule("lightsam-adagrad-norm").scaling("mup2") == mup2


def test_lookup_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown SAM rule 'gsam'; choose one of \['sam'"):
        get_rule("gsam")
    with pytest.raises(ValueError, match=r"unknown perturbation scaling 'layerwise'"):
        get_rule("sam").scaling("layerwise")
    with pytest.raises(ValueError, match="defined only for rules 'sam' and 'sam-on', not 'asam'"):
        get_rule("asam").scaling("mup2-coupled")
    assert get_rule(get_rule("sam")) is get_rule("sam")


def test_the_readout_rule_perturbs_output_and_scalar_like_tensors_alone() -> None:
    """``sam-readout``: SAM (factor 1, bucketed) on the readout's weight (output-like) and bias
    (scalar-like), normalization flag or not; SAM's rows under naive, global and μP² scaling."""
    readout = get_rule("sam-readout")
    assert readout.roles == READOUT_ROLES == {Role.OUTPUT, Role.SCALAR}
    assert readout.factor is Factor.ONE and readout.bucketed and readout.lightsam is None
    assert not readout.norm_only and not readout.offset_scales
    for norm in (False, True):
        assert [readout.perturbs(norm, role) for role in Role] == [False, False, True, True]
        assert readout.perturbs(norm, "output") and not readout.perturbs(norm, "hidden")
    assert set(readout.scalings) == {"naive", "global", "mup2"}
    for scaling in readout.scalings:
        assert readout.scaling(scaling) == get_rule("sam").scaling(scaling)
    with pytest.raises(ValueError, match="'mup2-coupled' is defined only for rules 'sam' and"):
        readout.scaling("mup2-coupled")


_NAMES = "|".join(re.escape(n) for n in (*RULES, *LIGHTSAM_RULES, *ONEPASS_RULES, "lightsam"))
_COMPARISON = re.compile(
    rf"""(==|!=|\bin\b|\bnot in\b)\s*\(?\s*["']({_NAMES})["']|["']({_NAMES})["']\s*(==|!=|\bin\b)"""
)


def test_no_rule_name_is_compared_outside_the_rule_table() -> None:
    """Code asks the :class:`Rule` (factor, norm_only, lightsam, ...), never its name; the
    config's ``sam.rule = "lightsam"`` (an alias resolved in one place) is the one exception."""
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "optim" / "rules.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if _COMPARISON.search(line) and 'rule != "lightsam"' not in line:
                hits.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
