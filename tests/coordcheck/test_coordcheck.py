"""The coordinate check measures the scaling the math note predicts (section 5)."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from mup2.cli import app
from mup2.coordcheck import (
    QUANTITIES,
    CoordCheck,
    coord_check,
    fit_slope,
    format_slopes,
    format_table1,
    plot_coord_checks,
    records,
    table1,
    verdict,
)
from mup2.models.mlp import MLP
from mup2.optim.lightsam import LightSAM

WIDTHS = (64, 128, 256, 512)
LAYERS = {"input": "features.0", "hidden": "features.2", "output": "head"}


def _batch(in_features: int = 32) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(32, in_features, generator=gen), torch.randint(0, 10, (32,), generator=gen)


@pytest.fixture(scope="module")
def sam_mlp() -> dict[str, CoordCheck]:
    """SAM on a 3-layer ReLU MLP in μP with SGD, under each perturbation scaling."""
    x, y = _batch()
    factory = partial(MLP, depth=3, in_features=32)
    return {
        scaling: coord_check(factory, WIDTHS, x, y, scheme="mup-sgd", scaling=scaling)
        for scaling in ("naive", "global", "mup2")
    }


def _slopes(r: CoordCheck, quantity: str) -> dict[str, float]:
    return {role: r.slope(layer, quantity) for role, layer in LAYERS.items()}


def test_mup2_perturbs_every_layer_effectively(sam_mlp: dict[str, CoordCheck]) -> None:
    for quantity in ("effective_perturbation", "total_perturbation"):
        slopes = _slopes(sam_mlp["mup2"], quantity)
        assert all(abs(s) <= 0.2 for s in slopes.values()), (quantity, slopes)


def test_global_scaling_perturbs_only_the_last_layer(sam_mlp: dict[str, CoordCheck]) -> None:
    slopes = _slopes(sam_mlp["global"], "effective_perturbation")  # note: -2 / -1 / 0
    assert slopes["input"] <= -1.5, slopes
    assert slopes["hidden"] <= -0.7, slopes
    assert abs(slopes["output"]) <= 0.2, slopes


def test_naive_scaling_blows_up_in_the_last_layer(sam_mlp: dict[str, CoordCheck]) -> None:
    slopes = _slopes(sam_mlp["naive"], "effective_perturbation")  # note: -1.5 / -0.5 / +0.5
    assert slopes["output"] >= 0.3, slopes
    assert slopes["hidden"] <= -0.25 and slopes["input"] <= -1.0, slopes


def test_mup_updates_and_activations_are_width_independent(
    sam_mlp: dict[str, CoordCheck],
) -> None:
    for scaling, r in sam_mlp.items():
        updates = _slopes(r, "update")
        assert all(abs(s) <= 0.2 for s in updates.values()), (scaling, updates)
        hidden_acts = [r.slope(LAYERS[k], "activation") for k in ("input", "hidden")]
        assert all(abs(s) <= 0.1 for s in hidden_acts), (scaling, hidden_acts)


def test_records_and_tables(sam_mlp: dict[str, CoordCheck], tmp_path: Path) -> None:
    results = list(sam_mlp.values())
    recs = records(results)
    assert len(recs) == 3 * len(LAYERS) * len(QUANTITIES)
    keys = {"scheme", "rule", "scaling", "quantity", "layer", "role", "slope"}
    assert all(keys <= rec.keys() for rec in recs)
    json.dumps(recs, allow_nan=False)  # nan slopes are written as null
    head = next(
        r for r in recs if (r["scaling"], r["layer"], r["quantity"]) == ("global", "head", "update")
    )
    assert head["role"] == "output" and head["group"] == "output-like"
    assert head["widths"] == list(WIDTHS) and head["verdict"] == "Θ(1)"
    text = format_slopes(results)
    assert "effective_perturbation" in text and "vanishes" in text and "grows" in text
    md = format_table1(results).splitlines()
    assert md[0] == "| rule | scaling | input-like | hidden-like | output-like |"
    assert md[2].startswith("| SAM | naive | no (") and "| yes, grows (+" in md[2]
    assert md[4].startswith("| SAM | μP² | yes (") and "no" not in md[4]
    png = plot_coord_checks(results, tmp_path / "cc.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_the_readout_rule_perturbs_the_head_alone() -> None:
    """``sam-readout`` perturbs the head alone at every width, the base width included (where
    the roles come from another width). Naive, it grows like SAM's naive row (+0.5, what μP-naive
    SAM tends to); its μP² row is Θ(1) (the ``mup-readout`` control, docs/sam.md)."""
    x, y = _batch()
    factory = partial(MLP, depth=3, in_features=32)
    results = table1(factory, WIDTHS, x, y, rules=("sam-readout",), scalings=("naive", "mup2"))
    by = {r.scaling: r for r in results}
    for r in results:
        for layer in (LAYERS["input"], LAYERS["hidden"]):
            for quantity in ("effective_perturbation", "total_perturbation"):
                assert all(v == 0.0 for v in r.values[(0, layer, quantity)]), (layer, quantity)
        assert all(v > 0.0 for v in r.values[(0, "head", "effective_perturbation")])
    assert by["naive"].slope("head", "effective_perturbation") >= 0.3
    assert abs(by["mup2"].slope("head", "effective_perturbation")) <= 0.2
    table = format_table1(results).splitlines()
    assert table[2].startswith("| readout-only SAM | naive | not perturbed | not perturbed | yes")


def test_rule_variants_under_mup2() -> None:
    """SAM-ON perturbs only norm layers; every rule's μP² row perturbs every layer it touches."""
    x, y = _batch()
    factory = partial(MLP, depth=3, in_features=32, norm="layer")
    widths = (64, 128, 256)
    results = table1(
        factory, widths, x, y, rules=("sam-on", "asam-layerwise"), scalings=("naive", "mup2")
    )
    # Elementwise ASAM's offset eta must be negligible next to |W| for any power law to hold
    # (a fixed eta overtakes the readout's 1/width weights); eta=0 checks the multipliers.
    results += table1(factory, widths, x, y, rules=("asam",), scalings=("mup2",), eta=0.0)
    by = {(r.rule, r.scaling): r for r in results}
    norms = ("features.1", "features.4")
    sam_on = by[("sam-on", "mup2")]
    assert all(abs(sam_on.slope(n, "effective_perturbation")) <= 0.2 for n in norms)
    assert all(by[("sam-on", "naive")].slope(n, "effective_perturbation") < -0.3 for n in norms)
    for layer in ("features.0", "features.3", "head"):
        assert all(v == 0.0 for v in sam_on.values[(0, layer, "effective_perturbation")])
    for rule in ("asam", "asam-layerwise"):
        r = by[(rule, "mup2")]
        slopes = {lay.name: r.slope(lay.name, "effective_perturbation") for lay in r.layers}
        assert all(abs(s) <= 0.2 for s in slopes.values()), (rule, slopes)
    lw = by[("asam-layerwise", "naive")]
    assert lw.slope("features.3", "effective_perturbation") >= 0.3  # hidden layers dominate
    table = format_table1(results)
    assert "| normalization |" in table.splitlines()[0]
    assert "| SAM-ON | μP² | not perturbed | not perturbed | not perturbed | yes (" in table


def test_elementwise_asam_leaves_scalar_tensors_unscaled() -> None:
    """The readout bias is scalar-like (its ||A g||^2 does not shrink with width): with the
    note's global x M^1/2 it took over the norm (slopes -0.27 / +0.52 here); with c = s = M on
    width-scaled tensors only, both layers stay put. Depth 2 keeps large widths cheap."""
    x, y = _batch()
    factory = partial(MLP, depth=2, in_features=32)
    widths = (64, 256, 1024, 4096, 16384)
    r = coord_check(factory, widths, x, y, rule="asam", scaling="mup2", eta=0.0)
    slopes = [r.slope(name, "effective_perturbation") for name in ("features.0", "head")]
    assert all(abs(s) <= 0.1 for s in slopes), slopes


def test_custom_optimizer_lightsam_adam() -> None:
    """Any SAM subclass can be checked; LightSAM-Adam's μP² ascent (c = 1/m_in) is effective in
    every layer, while its naive ascent grows in the hidden and output layers (note, §6)."""
    x, y = _batch()
    factory = partial(MLP, depth=3, in_features=32)
    slopes = {}
    for scaling in ("naive", "mup2"):
        opt = partial(LightSAM, variant="adam", lr=1e-3, rho=0.1, scaling=scaling)
        r = coord_check(factory, WIDTHS, x, y, scheme="mup-adam", lr=1e-3, optimizer=opt)
        assert (r.rule, r.scaling) == ("lightsam-adam", scaling)
        slopes[scaling] = _slopes(r, "effective_perturbation")
    assert all(abs(s) <= 0.2 for s in slopes["mup2"].values()), slopes
    assert slopes["naive"]["hidden"] >= 0.7 and slopes["naive"]["output"] >= 0.7, slopes


class _Affine(nn.Module):
    """``x * a + b`` per channel: a module with two parameters of its own."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(channels))
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.a[:, None, None] + self.b[:, None, None]


def _convnet(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        _Affine(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def test_conv_norm_and_multi_parameter_modules() -> None:
    built: list[nn.Module] = []

    def factory(width: int) -> nn.Module:
        built.append(_convnet(width))
        return built[-1]

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    rng = torch.get_rng_state()
    r = coord_check(factory, (16, 32, 64), x, y, scaling="mup2")
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert all(not m._forward_hooks for net in built for m in net.modules())
    groups = {lay.name: (lay.module_type, lay.group) for lay in r.layers}
    assert groups == {
        "0": ("Conv2d", "input-like"),
        "1": ("BatchNorm2d", "normalization"),
        "3": ("Conv2d", "hidden-like"),
        "4": ("_Affine", "input-like"),
        "8": ("Linear", "output-like"),
    }
    slopes = [r.slope(name, "effective_perturbation") for name in groups]
    assert all(abs(s) <= 0.25 for s in slopes), slopes


def test_fit_slope_and_verdict() -> None:
    assert fit_slope([64, 128, 256], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert fit_slope([64, 128, 256], [8.0, 4.0, 2.0]) == pytest.approx(-1.0)
    assert math.isnan(fit_slope([64, 128, 256], [1.0, 0.0, 1.0]))
    assert math.isnan(fit_slope([64, 128, 256], [1.0, math.inf, 1.0]))
    assert verdict(-0.25) == "vanishes" and verdict(-0.24) == "Θ(1)" and verdict(0.3) == "grows"
    assert verdict(math.nan) == "undefined" and verdict(math.nan, [0.0, 0.0]) == "zero"


@pytest.mark.parametrize(
    ("widths", "match"),
    [
        ((64, 128), "at least 3 widths"),
        ((64, 256, 128), "strictly increasing"),
        ((64, 64, 128), "strictly increasing"),
        ((0, 64, 128), "positive integers"),
    ],
)
def test_bad_widths(widths: tuple[int, ...], match: str) -> None:
    x, y = _batch()
    with pytest.raises(ValueError, match=match):
        coord_check(partial(MLP, in_features=32), widths, x, y)


def test_factory_that_ignores_width() -> None:
    x, y = _batch()
    with pytest.raises(ValueError, match="same parameter shapes at widths 64 and 128"):
        coord_check(lambda width: MLP(64, in_features=32), (64, 128, 256), x, y)
    with pytest.raises(ValueError, match="same parameter shapes at widths 128 and 256"):
        coord_check(lambda width: MLP(min(width, 128), in_features=32), (64, 128, 256), x, y)


def test_sam_on_needs_norm_layers() -> None:
    x, y = _batch()
    with pytest.raises(ValueError, match="norm='layer'"):
        coord_check(partial(MLP, in_features=32), (64, 128, 256), x, y, rule="sam-on")


def test_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    out_json, out_png = tmp_path / "cc.json", tmp_path / "cc.png"
    args = ["coordcheck", "--widths", "64,128,256", "--seeds", "1", "--steps", "1"]
    res = runner.invoke(
        app, [*args, "--scaling", "mup2", "--json", str(out_json), "--plot", str(out_png)]
    )
    assert res.exit_code == 0, res.output
    assert "effective_perturbation" in res.output
    recs = json.loads(out_json.read_text())
    assert {r["scaling"] for r in recs} == {"mup2"} and {r["rule"] for r in recs} == {"sam"}
    assert {r["quantity"] for r in recs} == set(QUANTITIES)
    assert out_png.stat().st_size > 0

    res = runner.invoke(app, [*args, "--table", "--scaling", "mup2"])
    assert res.exit_code == 0, res.output
    assert "| layerwise ASAM | μP² |" in res.output and "| SAM-ON | μP² |" in res.output

    bad = runner.invoke(app, ["coordcheck", "--widths", "64,128"])
    assert bad.exit_code == 2 and "at least 3 widths" in bad.output
    bad = runner.invoke(app, ["coordcheck", "--rule", "sam-on", "--norm", "none"])
    assert bad.exit_code == 2 and "--norm layer" in bad.output


@pytest.mark.parametrize(
    ("rule", "lr"), [("lightsam-adagrad-norm", 0.1), ("lightsam-adagrad", 0.01)]
)
def test_lightsam_rules_under_mup2_perturb_every_layer(rule: str, lr: float) -> None:
    """The other two LightSAM variants by rule name (μP-SGD becomes μP-Adam for AdaGrad):
    every layer's effective perturbation and update are Θ(1) under μP²."""
    x, y = _batch()
    r = coord_check(
        partial(MLP, depth=3, in_features=32), WIDTHS, x, y, rule=rule, lr=lr, rho=0.1, steps=2
    )
    assert (r.rule, r.scaling) == (rule, "mup2")
    assert r.scheme == ("mup-sgd" if rule == "lightsam-adagrad-norm" else "mup-adam")
    for quantity in ("effective_perturbation", "update"):
        slopes = _slopes(r, quantity)
        assert all(abs(s) <= 0.2 for s in slopes.values()), (quantity, slopes)
