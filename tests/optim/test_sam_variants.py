"""Cheap SAM: ρ schedules (late-phase SAM), SAM every k steps and LookSAM, against float64
references written here by hand; pass counts, cadence, schedule boundaries and checkpoints."""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn

from harness import free_port, join_gloo, leave_gloo, tanh_net
from mup2 import SAM, LightSAM, Parametrization, attach_lr_multipliers
from mup2.optim import LambdaRho, LatePhase, RhoScheduler
from mup2.optim.rho_schedule import parse_rho_schedule

from nets import mlp

LR, RHO, ALPHA = 0.1, 0.2, 0.7


#: Every test builds its models in float64 (conftest.py's fixture).
pytestmark = pytest.mark.usefixtures("float64")


def data(seed: int, n: int = 16) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 5, (n,), generator=g)


def model_and_groups(scheme: str = "mup-sgd") -> tuple[nn.Module, Parametrization]:
    model = mlp(48, norm=True)
    p = Parametrization.infer(model, mlp(12, norm=True), scheme)
    p.init_(model, seed=1)
    return model, p


def closure_for(
    model: nn.Module, opt: torch.optim.Optimizer, seed: int, calls: list[int]
) -> Callable[[], Tensor]:
    x, y = data(seed)

    def closure() -> Tensor:
        calls.append(seed)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def grads_at(model: nn.Module, seed: int) -> list[Tensor]:
    x, y = data(seed)
    loss = nn.functional.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, list(model.parameters())))


class Reference:
    """The step of each variant written from the formulas, in plain loops over the tensors: a
    twin model whose base optimizer is handed the gradient the variant descends along."""

    def __init__(self, model: nn.Module, p: Parametrization, scaling: str, base: str) -> None:
        self.model = copy.deepcopy(model)
        groups = p.param_groups(self.model, lr=LR)
        if base == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, momentum=0.9)
        else:
            opt = torch.optim.AdamW(groups, weight_decay=1e-2)
        self.opt = attach_lr_multipliers(opt)
        # SAM's rows (docs/math.md §4): naive c = s = 1; global c = M^-1/2, s = 1;
        # μP² c = s = r = m_out / m_in
        cs = {
            id(q): {
                "naive": (1.0, 1.0),
                "global": (g["width_mult"] ** -0.5, 1.0),
                "mup2": (g["m_out"] / g["m_in"],) * 2,
            }[scaling]
            for g in groups
            for q in g["params"]
        }
        self.c = [cs[id(q)][0] for q in self.model.parameters()]
        self.s = [cs[id(q)][1] for q in self.model.parameters()]
        self.g_v: list[Tensor] | None = None

    def sam_gradient(self, seed: int, rho: float) -> tuple[list[Tensor], list[Tensor]]:
        """``(g, g_s)``: eps_W = rho c_W g_W / sqrt(sum_V s_V ||g_V||^2)."""
        params = list(self.model.parameters())
        g = grads_at(self.model, seed)
        denom = math.sqrt(sum(s * float((t * t).sum()) for s, t in zip(self.s, g, strict=True)))
        w = [q.detach().clone() for q in params]
        with torch.no_grad():
            for q, c, t in zip(params, self.c, g, strict=True):
                q.add_(rho * c * t / denom)
        g_s = grads_at(self.model, seed)
        with torch.no_grad():
            for q, w0 in zip(params, w, strict=True):
                q.copy_(w0)
        return g, g_s

    def step(self, seed: int, kind: str, layerwise: bool = False, rho: float = RHO) -> None:
        """``kind``: ``sam``, ``plain`` (the base step on g), ``looksam-sam`` (SAM, storing
        g_v) or ``looksam-reuse``."""
        if kind == "plain":
            used = grads_at(self.model, seed)
        elif kind in ("sam", "looksam-sam"):
            g, used = self.sam_gradient(seed, rho)
            if kind == "looksam-sam":
                if layerwise:
                    self.g_v = [
                        s - float((a * s).sum()) / float((a * a).sum()) * a
                        for a, s in zip(g, used, strict=True)
                    ]
                else:
                    dot = sum(float((a * s).sum()) for a, s in zip(g, used, strict=True))
                    sq = sum(float((a * a).sum()) for a in g)
                    self.g_v = [s - dot / sq * a for a, s in zip(g, used, strict=True)]
        else:
            assert self.g_v is not None
            g = grads_at(self.model, seed)
            if layerwise:
                used = [
                    a + ALPHA * math.sqrt(float((a * a).sum()) / float((v * v).sum())) * v
                    for a, v in zip(g, self.g_v, strict=True)
                ]
            else:
                ng = math.sqrt(sum(float((a * a).sum()) for a in g))
                nv = math.sqrt(sum(float((v * v).sum()) for v in self.g_v))
                used = [a + ALPHA * ng / nv * v for a, v in zip(g, self.g_v, strict=True)]
        for q, t in zip(self.model.parameters(), used, strict=True):
            q.grad = t.detach().clone()
        self.opt.step()


def assert_same(a: nn.Module, b: nn.Module, tol: float = 1e-12) -> None:
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        diff = float((x - y).detach().abs().max())
        assert diff <= tol, (name, diff)


def make_sam(p: Parametrization, model: nn.Module, base: str, scaling: str, **kw: Any) -> SAM:
    groups = p.param_groups(model, lr=LR)
    if base == "sgd":
        return SAM(groups, torch.optim.SGD, rho=RHO, scaling=scaling, momentum=0.9, **kw)
    return SAM(groups, torch.optim.AdamW, rho=RHO, scaling=scaling, weight_decay=1e-2, **kw)


# -- SAM every k steps and LookSAM ------------------------------------------------------------


@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("scaling", ["naive", "global", "mup2"])
@pytest.mark.parametrize(
    ("between", "layerwise"), [("sgd", False), ("looksam", False), ("looksam", True)]
)
def test_every_k_matches_float64_reference(
    base: str, scaling: str, between: str, layerwise: bool
) -> None:
    """Steps 0, 3, 6 are SAM steps (two passes), the others one pass with the base step on g
    (``sgd``) or on LookSAM's g + alpha ||g||/||g_v|| g_v; under each of SAM's scalings."""
    model, p = model_and_groups("mup-sgd" if base == "sgd" else "mup-adam")
    ref = Reference(model, p, scaling, base)
    opt = make_sam(p, model, base, scaling, every=3, between=between, layerwise=layerwise)
    calls: list[int] = []
    for step in range(7):
        sam_step = step % 3 == 0
        assert opt.is_sam_step() == sam_step
        opt.step(closure_for(model, opt, step, calls))
        if between == "sgd":
            ref.step(step, "sam" if sam_step else "plain")
        else:
            ref.step(step, "looksam-sam" if sam_step else "looksam-reuse", layerwise)
        assert_same(model, ref.model)
        assert opt.sam_step == step + 1
    assert calls == [0, 0, 1, 2, 3, 3, 4, 5, 6, 6]  # two passes on SAM steps, one otherwise


def test_looksam_reuse_changes_the_step_and_alpha_zero_is_every_k() -> None:
    """LookSAM's steps in between differ from the plain base step; with alpha = 0 they are it."""
    runs = {}
    for name, kw in {
        "sgd": {"between": "sgd"},
        "look": {"between": "looksam"},
        "look0": {"between": "looksam", "alpha": 0.0},
    }.items():
        model, p = model_and_groups()
        opt = make_sam(p, model, "sgd", "mup2", every=2, **kw)
        for step in range(4):
            opt.step(closure_for(model, opt, step, []))
        runs[name] = model
    assert_same(runs["sgd"], runs["look0"], tol=0)
    diff = max(
        float((a - b).detach().abs().max())
        for a, b in zip(runs["sgd"].parameters(), runs["look"].parameters(), strict=True)
    )
    assert diff > 1e-4


def test_lightsam_looksam_reuses_between_sam_steps() -> None:
    """LightSAM with LookSAM: one pass between SAM steps, and those steps differ from the
    plain base step (alpha = 0 gives it exactly)."""
    runs = {}
    for alpha in (0.0, ALPHA):
        model, p = model_and_groups("mup-adam")
        opt = LightSAM(p.param_groups(model, lr=1e-3), "adam", lr=1e-3, rho=1e-3, every=2,
                       between="looksam", alpha=alpha, layerwise=True)  # fmt: skip
        calls: list[int] = []
        for step in range(4):
            opt.step(closure_for(model, opt, step, calls))
        assert calls == [0, 0, 1, 2, 2, 3]
        runs[alpha] = model
    twin, p = model_and_groups("mup-adam")
    plain = LightSAM(p.param_groups(twin, lr=1e-3), "adam", lr=1e-3, rho=1e-3, every=2)
    for step in range(4):
        plain.step(closure_for(twin, plain, step, []))
    assert_same(runs[0.0], twin, tol=0)
    diff = max(
        float((a - b).detach().abs().max())
        for a, b in zip(runs[ALPHA].parameters(), twin.parameters(), strict=True)
    )
    assert diff > 1e-6


def test_lightsam_every_k_takes_one_pass_between() -> None:
    model, p = model_and_groups("mup-adam")
    opt = LightSAM(p.param_groups(model, lr=1e-3), "adam", lr=1e-3, rho=RHO, every=2)
    calls: list[int] = []
    for step in range(4):
        opt.step(closure_for(model, opt, step, calls))
    assert calls == [0, 0, 1, 2, 2, 3]
    # the ascent's accumulators saw the SAM steps' first passes only
    steps = {float(st["ascent_step"]) for st in opt.state.values() if "ascent_step" in st}
    assert steps == {2.0}


def test_manual_api_follows_is_sam_step() -> None:
    """Frameworks: first_step + second backward + step() on SAM steps, one backward + step()
    otherwise; step() without a closure on a SAM step before first_step is an error."""
    model, p = model_and_groups()
    twin = copy.deepcopy(model)
    opt = make_sam(p, model, "sgd", "mup2", every=2, between="looksam")
    ref_opt = make_sam(p, twin, "sgd", "mup2", every=2, between="looksam")
    for step in range(4):
        ref_opt.step(closure_for(twin, ref_opt, step, []))
        x, y = data(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if opt.is_sam_step():
            opt.first_step(zero_grad=True)
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert_same(model, twin, tol=0)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()


def test_step_accumulate_follows_the_cycle() -> None:
    """Two micro-batches per step: the same steps as one closure on their union, with one
    accumulated pass on the steps between SAM steps."""
    model, p = model_and_groups()
    twin = copy.deepcopy(model)
    opt = make_sam(p, model, "sgd", "mup2", every=2, between="looksam")
    ref = make_sam(p, twin, "sgd", "mup2", every=2, between="looksam")
    calls: list[int] = []

    def loss_fn(batch: tuple[Tensor, Tensor]) -> Tensor:
        calls.append(1)
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    for step in range(4):
        x, y = data(step)
        opt.step_accumulate(loss_fn, [(x[:8], y[:8]), (x[8:], y[8:])])
        ref.step(closure_for(twin, ref, step, []))
    assert len(calls) == 4 + 2 + 4 + 2
    assert_same(model, twin)


# -- ρ schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "fraction", "sgd_steps"),
    [(10, 0.3, 7), (10, 1.0, 0), (10, 0.05, 10), (100, 0.2, 80), (7, 0.5, 4), (10, 0.9, 1)],
)
def test_late_phase_boundaries(total: int, fraction: float, sgd_steps: int) -> None:
    """rho = 0 for the first round((1 - F) T) steps, the base radius from then on (per group)."""
    model, p = model_and_groups()
    groups = p.param_groups(model, lr=LR)
    groups[1]["rho"] = 0.5
    opt = SAM(groups, rho=RHO)
    sched = LatePhase(opt, total, fraction)
    seen = []
    for _ in range(total + 2):
        seen.append([g["rho"] for g in opt.param_groups[:2]])
        sched.step()
    assert seen == [[0.0, 0.0]] * sgd_steps + [[RHO, 0.5]] * (total + 2 - sgd_steps)


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_rho_zero_steps_take_one_pass_and_match_the_reference(base: str) -> None:
    """A step whose rho is 0 in every group is the base step on g, with one forward/backward."""
    model, p = model_and_groups("mup-sgd" if base == "sgd" else "mup-adam")
    ref = Reference(model, p, "mup2", base)
    opt = make_sam(p, model, base, "mup2")
    sched = LatePhase(opt, total_steps=6, fraction=0.5)
    calls: list[int] = []
    for step in range(6):
        assert opt.needs_second_pass() == (step >= 3) == opt.is_sam_step()
        opt.step(closure_for(model, opt, step, calls))
        ref.step(step, "sam" if step >= 3 else "plain")
        sched.step()
        assert_same(model, ref.model)
    assert calls == [0, 1, 2, 3, 3, 4, 4, 5, 5]
    assert opt.sam_step == 3  # the cycle counts steps with rho > 0


def test_lambda_rho_scales_each_group_and_late_looksam_starts_with_a_sam_step() -> None:
    model, p = model_and_groups()
    opt = make_sam(p, model, "sgd", "mup2", every=3, between="looksam")
    sched = LambdaRho(opt, lambda t: 0.0 if t < 2 else t / 4)
    calls: list[int] = []
    rhos = []
    for step in range(6):
        rhos.append(opt.param_groups[0]["rho"])
        opt.step(closure_for(model, opt, step, calls))
        sched.step()
    assert rhos == pytest.approx([0, 0, RHO * 0.5, RHO * 0.75, RHO, RHO * 1.25])
    assert calls == [0, 1, 2, 2, 3, 4, 5, 5]  # SAM at steps 2 and 5


def test_rho_scheduler_state_round_trip() -> None:
    model, p = model_and_groups()
    opt = make_sam(p, model, "sgd", "mup2")
    sched = LatePhase(opt, 10, 0.4)
    for _ in range(5):
        sched.step()
    sd = sched.state_dict()
    assert sd == {"base_rhos": [RHO] * len(opt.param_groups), "last_step": 5, "total_steps": 10,
                  "fraction": 0.4, "start": 6}  # fmt: skip
    fresh_model, fresh_p = model_and_groups()
    fresh = make_sam(fresh_p, fresh_model, "sgd", "mup2")
    other = LatePhase(fresh, 10, 0.4)
    assert fresh.param_groups[0]["rho"] == 0.0
    other.load_state_dict(sd)
    other.step()
    assert [g["rho"] for g in fresh.param_groups] == [RHO] * len(opt.param_groups)


def test_rho_scheduler_errors() -> None:
    model, p = model_and_groups()
    opt = make_sam(p, model, "sgd", "mup2")
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        LatePhase(opt, 10, 0.0)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        LatePhase(opt, 0, 0.5)
    with pytest.raises(TypeError, match="total_steps must be an integer"):
        LatePhase(opt, 10.0, 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'rho' in each param group"):
        RhoScheduler(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="rho_lambda must be a function"):
        LambdaRho(opt, 0.5)  # type: ignore[arg-type]
    assert parse_rho_schedule("late:0.2") == 0.2 and parse_rho_schedule("constant") is None
    for bad in ("late", "late:0", "late:1.5", "late:x", "early:0.2", "late:nan"):
        with pytest.raises(ValueError, match="is not a ρ schedule"):
            parse_rho_schedule(bad)


def test_sam_refuses_bad_cheap_arguments() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="every must be >= 1"):
        SAM(params, lr=0.1, every=0)
    with pytest.raises(TypeError, match="every must be an integer"):
        SAM(params, lr=0.1, every=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between must be one of"):
        SAM(params, lr=0.1, between="lookahead")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        SAM(params, lr=0.1, alpha=-1.0)


def test_looksam_refuses_a_grad_scaler() -> None:
    model, p = model_and_groups()
    opt = make_sam(p, model, "sgd", "mup2", every=2, between="looksam")
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(ValueError, match="takes no GradScaler"):
        opt.step(closure_for(model, opt, 0, []), scaler=scaler)


# -- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("between", ["sgd", "looksam"])
def test_checkpoint_mid_cycle_resumes_bit_identically(base: str, between: str) -> None:
    """Saved after step 4 of a cycle of 3 in the SAM phase of a late schedule: the resumed
    optimizer and schedule continue exactly (the counter and LookSAM's g_v are saved)."""
    scheme = "mup-sgd" if base == "sgd" else "mup-adam"

    def make() -> tuple[nn.Module, SAM, LatePhase]:
        model, p = model_and_groups(scheme)
        opt = make_sam(p, model, base, "mup2", every=3, between=between)
        return model, opt, LatePhase(opt, 9, 0.8)

    model, opt, sched = make()

    def run(m: nn.Module, o: SAM, s: LatePhase, steps: range) -> None:
        for step in steps:
            o.step(closure_for(m, o, step, []))
            s.step()

    run(model, opt, sched, range(4))
    buf = io.BytesIO()
    torch.save({"m": model.state_dict(), "o": opt.state_dict(), "s": sched.state_dict()}, buf)
    assert opt.sam_step == 2 and opt.state_dict()["sam_step"] == 2
    if between == "looksam":
        assert all("looksam_gv" in st for st in opt.state_dict()["state"].values())
    run(model, opt, sched, range(4, 9))
    buf.seek(0)
    ckpt = torch.load(buf)
    model2, opt2, sched2 = make()
    model2.load_state_dict(ckpt["m"])
    opt2.load_state_dict(ckpt["o"])
    sched2.load_state_dict(ckpt["s"])
    run(model2, opt2, sched2, range(4, 9))
    assert_same(model, model2, tol=0)
    assert opt2.sam_step == opt.sam_step == 7


def test_old_state_dicts_without_a_counter_load() -> None:
    model, p = model_and_groups()
    opt = make_sam(p, model, "sgd", "mup2", every=2)
    sd = opt.state_dict()
    del sd["sam_step"]
    opt.sam_step = 5
    opt.load_state_dict(sd)
    assert opt.sam_step == 0


# -- DDP (two gloo processes) -------------------------------------------------------------------

WORLD = 2


def _shard(rank: int, step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (8,), generator=g
    )


def _cheap_run(model: nn.Module, between: str, batches: Callable[[int], tuple[Tensor, Tensor]],
               ddp: nn.Module | None = None) -> list[Tensor]:  # fmt: skip
    net = ddp if ddp is not None else model
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9, every=2,
              between=between, model=net)  # type: ignore[arg-type]  # fmt: skip
    for step in range(5):
        x, y = batches(step)

        def closure(x: Tensor = x, y: Tensor = y) -> Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return [q.detach().clone() for q in model.parameters()]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    join_gloo(rank, port, WORLD)
    torch.set_default_dtype(torch.float64)
    got = {}
    for between in ("sgd", "looksam"):
        model = tanh_net()
        ddp = nn.parallel.DistributedDataParallel(model)
        got[between] = _cheap_run(model, between, lambda s: _shard(rank, s), ddp)
    torch.save(got, f"{out}.{rank}")
    leave_gloo()


def test_ddp_every_k_and_looksam(tmp_path: Path) -> None:
    """Replicas stay identical; LookSAM (whose first pass DDP reduces) equals the one-process
    run on the union of the shards."""
    out = str(tmp_path / "params")
    mp.spawn(_ddp_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    results = [torch.load(f"{out}.{r}") for r in range(WORLD)]
    for between in ("sgd", "looksam"):
        for a, b in zip(results[0][between], results[1][between], strict=True):
            assert torch.equal(a, b), between

    def union(step: int) -> tuple[Tensor, Tensor]:
        parts = [_shard(r, step) for r in range(WORLD)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    want = _cheap_run(tanh_net(), "looksam", union)
    for a, b in zip(results[0]["looksam"], want, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    start = tanh_net().parameters()
    moved = [float((a - b).detach().abs().max()) for a, b in zip(want, start, strict=True)]
    assert max(moved) > 1e-3
