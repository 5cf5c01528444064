"""MSAM and RWP (one pass per step) against float64 references written from the math note (§8),
their first step, checkpoints, DDP replicas and the coordinate check of their μP² scaling."""

from __future__ import annotations

import io
import math
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from typer.testing import CliRunner

from harness import free_port, join_gloo, leave_gloo
from mup2 import MSAM, ONEPASS_RULES, RWP, Parametrization, get_rule
from mup2.batched import BatchError, check_batchable
from mup2.cli import app
from mup2.config import ConfigError, parse_config
from mup2.coordcheck import coord_check
from mup2.data.loader import derive_seed
from mup2.models.mlp import MLP
from mup2.optim.onepass import OnePassSAM, onepass_optimizer
from mup2.sweep import expand, parse_sweep_config, run_sweep
from mup2.train import make_model, make_optimizer, train

from nets import mlp

SCALINGS = ("naive", "global", "mup2")
WORLD = 2


#: Every test builds its models in float64 (conftest.py's fixture).
pytestmark = pytest.mark.usefixtures("float64")


def _setup(scheme: str = "mup-sgd", **group_kw: Any) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A LayerNorm MLP at 4x its base width with μP groups of several radii."""
    torch.manual_seed(0)
    model, base = mlp(48, norm=True), mlp(12, norm=True)
    p = Parametrization.infer(model, base, scheme)
    p.init_(model, seed=1)
    groups = p.param_groups(model, **group_kw)
    for i, g in enumerate(groups):
        g["rho"] = 0.1 * (1 + i % 3)
    groups[1]["rho_mult"] = 2.0
    return model, groups


def _batch(seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(32, 12, generator=gen), torch.randint(0, 5, (32,), generator=gen)


def _closure(model: nn.Module, opt: torch.optim.Optimizer, seed: int = 0) -> Any:
    x, y = _batch(seed)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def msam_factors(scaling: str, g: dict[str, Any]) -> tuple[float, float]:
    """(c, s) of one tensor: SAM's (the momentum scales like the gradient)."""
    r, m = g["m_out"] / g["m_in"], g["width_mult"]
    return {"naive": (1.0, 1.0), "global": (m**-0.5, 1.0), "mup2": (r, r)}[scaling]


def rwp_factor(scaling: str, g: dict[str, Any]) -> float:
    """c of one tensor: m_in^-1/2 under μP² (the noise's effect eps x stays Θ(1))."""
    return {"naive": 1.0, "global": g["width_mult"] ** -0.5, "mup2": g["m_in"] ** -0.5}[scaling]


def reference_msam(groups: list[dict[str, Any]], scaling: str, key: str) -> dict[int, Tensor]:
    """eps_W = -rho_W^2 c_W m_W / sqrt(sum_V rho_V^2 s_V ||m_V||^2), in plain loops."""
    terms = []
    for g in groups:
        rho = g["rho"] * g["rho_mult"]
        for p in g["params"]:
            m = g["state"][p][key]
            c, s = msam_factors(scaling, g)
            terms.append((p, rho, c, s, m))
    denom = math.sqrt(sum(rho**2 * s * float((m * m).sum()) for _, rho, _, s, m in terms))
    return {id(p): -(rho**2) * c * m / denom for p, rho, c, _, m in terms}


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("restore", ["copy", "subtract", "swap"])
def test_msam_matches_float64_reference(scaling: str, base: str, restore: str) -> None:
    """Three steps: the first is the base optimizer's alone (no momentum yet); then eps is
    minus the normalized momentum (to 1e-12), and the step is the base step with the gradient
    taken at w + eps (SGD with momentum and weight decay, by hand)."""
    scheme = "mup-sgd" if base == "sgd" else "mup-adam"
    model, groups = _setup(scheme, lr=0.05, weight_decay=1e-3)
    if base == "sgd":
        opt = MSAM(groups, torch.optim.SGD, scaling=scaling, restore=restore, momentum=0.9)
    else:
        opt = MSAM(groups, torch.optim.AdamW, scaling=scaling, restore=restore)
    key = "momentum_buffer" if base == "sgd" else "exp_avg"
    assert opt.momentum_key == key
    w0 = [q.detach().clone() for q in model.parameters()]
    opt.step(_closure(model, opt))
    # step 1: no momentum, no perturbation: the plain base step at w0
    twin = mlp(48, norm=True)
    with torch.no_grad():
        for a, b in zip(twin.parameters(), w0, strict=True):
            a.copy_(b)
    tg = [
        {**g, "params": list(tq)}
        for g, tq in zip(groups, _twin_params(twin, model, groups), strict=True)
    ]
    tbase: torch.optim.Optimizer
    if base == "sgd":
        tbase = torch.optim.SGD(_scaled(tg), momentum=0.9)
    else:
        tbase = torch.optim.AdamW(_scaled(tg))
    _closure(twin, tbase)()
    tbase.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    opt.step(_closure(model, opt, 1))
    # step 3 by hand
    state = opt.base_optimizer.state
    ref_groups = [{**g, "state": state} for g in opt.param_groups]
    expected = reference_msam(ref_groups, scaling, key)
    before = {id(q): q.detach().clone() for q in model.parameters()}
    mom = {id(q): state[q][key].clone() for q in model.parameters()}
    opt.first_step()
    for q in model.parameters():
        eps = q.detach() - before[id(q)]
        assert torch.allclose(eps, expected[id(q)], rtol=1e-12, atol=1e-15)
        assert eps.abs().max() > 0
    closure = _closure(model, opt, 2)
    with torch.enable_grad():
        closure()
    grads = {id(q): q.grad.detach().clone() for q in model.parameters()}  # type: ignore[union-attr]
    opt.second_step()
    if base != "sgd":
        return
    for g in opt.param_groups:
        lr = g["lr"] * g["lr_mult"]
        for q in g["params"]:
            w = before[id(q)]
            buf = 0.9 * mom[id(q)] + grads[id(q)] + g["weight_decay"] * w
            assert torch.allclose(q.detach(), w - lr * buf, rtol=1e-12, atol=1e-15)


def _twin_params(twin: nn.Module, model: nn.Module, groups: list[dict[str, Any]]) -> list[Any]:
    index = {id(q): i for i, q in enumerate(model.parameters())}
    tp = list(twin.parameters())
    return [[tp[index[id(q)]] for q in g["params"]] for g in groups]


def _scaled(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain torch groups with the μP LR multiplier applied (mup2 applies it at step time)."""
    keep = ("params", "weight_decay")
    return [{**{k: g[k] for k in keep}, "lr": g["lr"] * g["lr_mult"]} for g in groups]


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("restore", ["copy", "subtract"])
def test_rwp_matches_float64_reference(scaling: str, restore: str) -> None:
    """eps_W = rho_W c_W xi_W, xi drawn in plan order from a generator seeded with ``seed``;
    a group with rho = 0 draws nothing and is not moved."""
    model, groups = _setup(lr=0.05)
    groups[2]["rho"] = 0.0
    opt = RWP(groups, torch.optim.SGD, scaling=scaling, seed=7, restore=restore, momentum=0.9)
    gen = torch.Generator().manual_seed(7)
    for step in range(2):
        expected = {}
        for g in opt.param_groups:
            rho = g["rho"] * g["rho_mult"]
            for q in g["params"]:
                if rho > 0:
                    xi = torch.randn(q.shape, generator=gen, dtype=q.dtype)
                    expected[id(q)] = rho * rwp_factor(scaling, g) * xi
        before = {id(q): q.detach().clone() for q in model.parameters()}
        opt.first_step()
        for q in model.parameters():
            eps = q.detach() - before[id(q)]
            want = expected.get(id(q), torch.zeros_like(eps))
            assert torch.allclose(eps, want, rtol=1e-12, atol=1e-15), step
        with torch.enable_grad():
            _closure(model, opt, step)()
        opt.second_step()


@pytest.mark.parametrize("rule", ONEPASS_RULES)
def test_a_step_is_one_pass_and_the_base_step_at_the_perturbed_point(rule: str) -> None:
    """``step(closure)`` runs the closure once and returns its loss at ``w + eps``; the update
    equals ``first_step``, one backward, ``second_step``."""
    finals = []
    for manual in (False, True):
        model, groups = _setup(lr=0.05)
        opt = onepass_optimizer(rule)(groups, torch.optim.SGD, momentum=0.9)
        assert isinstance(opt, OnePassSAM) and not opt.needs_second_pass()
        calls = []
        for t in range(3):
            inner = _closure(model, opt, t)

            def closure(inner: Any = inner, calls: list[int] = calls) -> Tensor:
                calls.append(1)
                return inner()  # type: ignore[no-any-return]

            if manual:
                opt.first_step()
                with torch.enable_grad():
                    closure()
                opt.step()
            else:
                opt.step(closure)
        assert len(calls) == 3
        finals.append([q.detach().clone() for q in model.parameters()])
    for a, b in zip(*finals, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rule", ONEPASS_RULES)
def test_checkpoint_round_trip_resumes_bit_for_bit(rule: str) -> None:
    model, groups = _setup(lr=0.05)
    cls = onepass_optimizer(rule)
    opt = cls(groups, torch.optim.SGD, momentum=0.9)
    for t in range(2):
        opt.step(_closure(model, opt, t))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    for t in range(2, 4):
        opt.step(_closure(model, opt, t))
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model2, groups2 = _setup(lr=0.05)
    model2.load_state_dict(saved["model"])
    opt2 = cls(groups2, torch.optim.SGD, momentum=0.9, **({"seed": 5} if cls is RWP else {}))
    opt2.load_state_dict(saved["opt"])
    for t in range(2, 4):
        opt2.step(_closure(model2, opt2, t))
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    if cls is RWP:
        assert opt2.seed == 0  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="lacks 'rwp'"):
            opt2.load_state_dict(MSAM(list(model2.parameters()), momentum=0.9).state_dict())


def test_step_accumulate_equals_one_batch() -> None:
    """Two equal micro-batches give the step on their union (one perturbation)."""
    finals = []
    for micro in (False, True):
        model, groups = _setup(lr=0.05)
        opt = RWP(groups, torch.optim.SGD, momentum=0.9)
        x, y = _batch()
        for _ in range(2):
            if micro:
                opt.step_accumulate(
                    lambda b, model=model: nn.functional.cross_entropy(model(b[0]), b[1]),
                    [(x[:16], y[:16]), (x[16:], y[16:])],
                )
            else:
                opt.step(_closure(model, opt))
        finals.append([q.detach().clone() for q in model.parameters()])
    for a, b in zip(*finals, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_one_pass_rules_are_in_the_rule_table() -> None:
    for name in ONEPASS_RULES:
        rule = get_rule(name)
        assert rule.one_pass and rule.lightsam is None and rule.bucketed
        assert set(rule.scalings) == set(SCALINGS)
    assert get_rule("msam").reads_momentum and not get_rule("rwp").reads_momentum
    assert onepass_optimizer("msam") is MSAM and onepass_optimizer("rwp") is RWP
    with pytest.raises(ValueError, match="not one-pass"):
        onepass_optimizer("sam")
    with pytest.raises(ValueError, match=r"rule 'rwp' is one-pass: use mup2.RWP\(params"):
        MSAM([{"params": list(mlp(8).parameters()), "rule": "rwp"}], momentum=0.9)
    with pytest.raises(ValueError, match=r"MSAM takes the rules \['msam'\], not 'sam'"):
        MSAM([{"params": list(mlp(8).parameters()), "rule": "sam"}], momentum=0.9)


# -- DDP: identical noise and momentum on every replica -------------------------------------


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))


def _worker(rank: int, port: int, out: str) -> None:
    join_gloo(rank, port, WORLD)
    torch.set_default_dtype(torch.float32)
    results = {}
    for rule in ONEPASS_RULES:
        net = DistributedDataParallel(_net())
        p = Parametrization.infer(net, _net(), "mup-sgd")
        opt = onepass_optimizer(rule)(
            p.param_groups(net, lr=0.1), torch.optim.SGD, rho=0.05, momentum=0.9, model=net
        )
        gen = torch.Generator().manual_seed(rank)  # each replica its own data
        eps = []
        for _ in range(3):
            x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
            w = [q.detach().clone() for q in net.parameters()]
            opt.first_step()
            eps.append([q.detach() - a for q, a in zip(net.parameters(), w, strict=True)])
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.second_step()
        results[rule] = (eps, [q.detach().clone() for q in net.parameters()])
    torch.save(results, f"{out}.{rank}")
    leave_gloo()


def test_ddp_replicas_draw_identical_perturbations(tmp_path: Path) -> None:
    out = str(tmp_path / "r")
    mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    runs = [torch.load(f"{out}.{r}") for r in range(WORLD)]
    for rule in ONEPASS_RULES:
        (eps0, w0), (eps1, w1) = runs[0][rule], runs[1][rule]
        for a, b in zip(w0, w1, strict=True):
            assert torch.equal(a, b), rule  # replicas identical, bit for bit
        for step0, step1 in zip(eps0, eps1, strict=True):
            for a, b in zip(step0, step1, strict=True):
                assert torch.equal(a, b), rule
        moved = [any(bool(e.abs().max() > 0) for e in step) for step in eps0]
        # MSAM: nothing to follow before the first step's momentum; RWP: noise from the start
        assert moved == ([False, True, True] if rule == "msam" else [True, True, True])


# -- the coordinate check: μP² flat, naive and global not ------------------------------------


@pytest.mark.parametrize("rule", ONEPASS_RULES)
def test_coordcheck_mup2_flat_naive_and_global_not(rule: str) -> None:
    """Widths 64…256, one seed, three steps: every layer's effective perturbation is flat
    under μP² (|slope| <= 0.2); naive and global leave some layer growing or vanishing, as
    ``docs/math.md`` §8 derives (RWP naive: hidden and output +0.5; MSAM as SAM). 200 classes:
    RWP's readout perturbation is a sum over its rows' noise, and 10 rows make a noisy RMS."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 32, generator=gen), torch.randint(0, 200, (32,), generator=gen)
    factory = partial(MLP, depth=3, in_features=32, out_features=200)
    layers = {"input": "features.0", "hidden": "features.2", "output": "head"}
    kw: dict[str, Any] = {"base_kwargs": {"momentum": 0.9}} if rule == "msam" else {}
    slopes = {}
    for scaling in SCALINGS:
        r = coord_check(
            factory, (64, 128, 256), x, y, rule=rule, scaling=scaling, steps=3, seeds=(0,), **kw
        )
        slopes[scaling] = {k: r.slope(v, "effective_perturbation") for k, v in layers.items()}
    assert all(abs(s) <= 0.2 for s in slopes["mup2"].values()), slopes
    if rule == "rwp":
        assert slopes["naive"]["hidden"] > 0.35 and slopes["naive"]["output"] > 0.25, slopes
        assert slopes["global"]["input"] < -0.35, slopes
    else:
        assert slopes["naive"]["input"] < -0.9 and slopes["naive"]["output"] > 0.3, slopes
        assert slopes["global"]["hidden"] < -0.6, slopes


# -- configs: `sam.rule = "msam" | "rwp"` in `mup2 train` -----------------------------------


@pytest.mark.parametrize(
    ("rule", "optimizer", "schedule"),
    [("msam", "sgd", "constant"), ("msam", "adamw", "constant"), ("rwp", "sgd", "late:0.5")],
)
def test_train_config_runs_one_pass_rules(rule: str, optimizer: str, schedule: str) -> None:
    """A run of each, in each base optimizer; a late-phase ρ schedule applies to them too."""
    torch.set_default_dtype(torch.float32)
    cfg = parse_config(
        {
            "epochs": 2,
            "batch_size": 16,
            "progress": False,
            "scheme": "mup-sgd" if optimizer == "sgd" else "mup-adam",
            "model": {"name": "mlp", "width": 32, "base_width": 16},
            "data": {"name": "synthetic", "train_size": 64, "test_size": 32},
            "optimizer": {"name": optimizer, "lr": 0.05 if optimizer == "sgd" else 1e-3},
            "sam": {
                "rule": rule,
                "rho": 0.3 if rule == "msam" else 0.01,
                "scaling": "mup2",
                "schedule": schedule,
            },
        }
    )
    result = train(cfg)
    assert result.status == "ok" and len(result.metrics) == 2
    assert all(math.isfinite(m.train_loss) for m in result.metrics)
    batch_error = "no one-pass rule" if optimizer == "sgd" else "sgd"
    with pytest.raises(BatchError, match=batch_error):
        check_batchable([cfg])
    if rule == "rwp":  # its noise is seeded by the run's seed
        model, p = make_model(cfg, (1, 8, 8), 10)
        opt = make_optimizer(cfg, model, p)
        assert isinstance(opt, RWP) and opt.seed == derive_seed(cfg.seed, 3)


def test_config_refuses_msam_without_momentum() -> None:
    base = {
        "epochs": 1,
        "batch_size": 16,
        "model": {"name": "mlp", "width": 32},
        "data": {"name": "synthetic"},
        "sam": {"rule": "msam", "rho": 0.3},
    }
    for opt in ({"name": "sgd", "lr": 0.1, "momentum": 0.0}, {"name": "adagrad", "lr": 0.1}):
        with pytest.raises(ConfigError, match="'msam' perturbs along the optimizer's momentum"):
            parse_config({**base, "optimizer": opt, "scheme": "sp"})


def test_cli_coordcheck_table_rows_of_the_one_pass_rules() -> None:
    runner = CliRunner()
    args = ["coordcheck", "--table", "--rule", "msam", "--rule", "rwp", "--norm", "layer"]
    res = runner.invoke(app, [*args, "--widths", "16,32,64", "--seeds", "1", "--steps", "2"])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line.startswith("| MSAM") or "RWP" in line]
    assert len(rows) == 6 and "| MSAM | μP² |" in res.output and "| RWP | naive |" in res.output
    adamw = [*args, "--optimizer", "adamw", "--scaling", "mup2", "--widths", "16,32,64"]
    res = runner.invoke(app, [*adamw, "--seeds", "1", "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert "AdamW lr=0.001" in res.output and "| MSAM | μP² | yes" in res.output
    bad = runner.invoke(app, ["coordcheck", "--rule", "msam", "--momentum", "0"])
    assert bad.exit_code == 2 and "momentum=0" in bad.output


@pytest.mark.slow
@pytest.mark.parametrize("rule", ONEPASS_RULES)
def test_a_sweep_of_a_one_pass_rule_runs(rule: str, tmp_path: Path) -> None:
    """``[train.sam] rule = "msam"`` or ``"rwp"`` in a sweep; the grid's rho and the
    parametrization's scaling reach the optimizer."""
    torch.set_default_dtype(torch.float32)
    train_cfg = {
        "epochs": 1,
        "batch_size": 64,
        "progress": False,
        "model": {"name": "mlp", "width": 16, "base_width": 16},
        "data": {"name": "synthetic", "train_size": 128, "test_size": 64},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "sam": {"rule": rule},
    }
    grid = {"widths": [16, 32], "lr": [0.1], "rho": [0.01], "parametrizations": ["mup2"]}
    cfg = parse_sweep_config({"name": rule, "train": train_cfg, "grid": grid})
    _, state = run_sweep(cfg, tmp_path, progress=False)
    assert state.done and state.complete == len(expand(cfg)) == 2
