"""Two-process FSDP2 (gloo, CPU, float64): SAM and LightSAM on a ``fully_shard``ed model match a
single-process run on the full batch, and a DCP checkpoint taken mid-run resumes bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import mup2
import mup2.optim.dcp
from harness import Batch, join_gloo, leave_gloo, rank0_results, sam_step, tanh_net

WORLD, STEPS, SAVE_AT, MICRO = 2, 4, 2, 8
#: ``-accum``: each rank accumulates two micro-batches of 4 (gradient sync on the last only);
#: ``-mp``: a mixed-precision policy computes in float32 (sharded parameters stay float64);
#: ``-every``/``-looksam``: SAM on every 3rd step (plain or LookSAM steps between), so the
#: checkpoint after step 2 is mid-cycle. ``msam``: the one-pass MSAM, its momentum sharded.
CONFIGS = [
    "sam-naive",
    "sam-mup2",
    "sam-mup2-accum",
    "sam-mup2-mp",
    "lightsam-adam",
    "lightsam-adagrad",
    "lightsam-adagrad-norm",
    "sam-mup2-looksam",
    "lightsam-adam-every",
    "msam-mup2",
]
#: The float64 single-process reference against float32 compute under ``-mp``.
MP_ATOL = 1e-6


def _batch(step: int) -> Batch:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(WORLD * MICRO, 5, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (WORLD * MICRO,), generator=g)


def _build(name: str, model: nn.Module, shard: Callable[[nn.Module], None]) -> mup2.SAM:
    """The optimizer of config ``name`` over ``model`` (μP groups from width 16 against 8)."""
    cheap: dict[str, Any] = {}
    if name.endswith(("-every", "-looksam")):
        cheap = {"every": 3, "between": "looksam" if name.endswith("-looksam") else "sgd"}
        name = name.rsplit("-", 1)[0]
    sgd_like = name.startswith(("sam", "msam")) or name.endswith("adagrad-norm")
    scheme = "mup-sgd" if sgd_like else "mup-adam"
    with torch.device("meta"):
        base = tanh_net(8)
    p = mup2.Parametrization.infer(model, base, scheme)  # on the unsharded model
    shard(model)
    groups = p.param_groups(model, lr=0.05)
    if name.startswith("msam"):
        return mup2.MSAM(groups, torch.optim.SGD, rho=0.3, momentum=0.9, model=model)
    if name.startswith("sam"):
        scaling = name.split("-")[1]
        return mup2.SAM(  # DTensors keep their storage: "swap" restores them by copy
            groups,
            torch.optim.SGD,
            rho=0.1,
            scaling=scaling,
            momentum=0.9,
            model=model,
            restore="swap",
            **cheap,
        )
    variant: Any = name.split("-", 1)[1]
    return mup2.LightSAM(groups, variant, lr=0.02, rho=0.01, model=model, **cheap)


def _steps(
    model: nn.Module, opt: mup2.SAM, steps: range, rows: slice, micro: int | None = None
) -> None:
    def loss_fn(b: Batch) -> Tensor:
        return nn.functional.cross_entropy(model(b[0]), b[1])

    for step in steps:
        x, y = _batch(step)
        sam_step(opt, loss_fn, (x[rows], y[rows]), micro)


def reference(name: str) -> list[Tensor]:
    """One process, the full batch of both ranks, no sharding."""
    model = tanh_net()
    opt = _build(name, model, lambda m: None)
    _steps(model, opt, range(STEPS), slice(None))
    return [q.detach() for q in model.parameters()]


def _fully_shard(model: nn.Module, policy: MixedPrecisionPolicy | None = None) -> None:
    kw: dict[str, Any] = {} if policy is None else {"mp_policy": policy}
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, **kw)
    fully_shard(model, **kw)


def _fp32_compute(model: nn.Module) -> None:
    _fully_shard(model, MixedPrecisionPolicy(torch.float32, reduce_dtype=torch.float64))


def _full(model: nn.Module) -> list[Tensor]:
    return [q.full_tensor().detach() for q in model.parameters()]  # type: ignore[attr-defined]


def _worker(rank: int, port: int, out: str) -> None:
    join_gloo(rank, port, WORLD)
    rows = slice(rank * MICRO, (rank + 1) * MICRO)
    results: dict[str, Any] = {}
    for name in CONFIGS:
        micro = 2 if name.endswith("-accum") else None
        shard = _fp32_compute if name.endswith("-mp") else _fully_shard
        model = tanh_net()
        opt = _build(name, model, shard)
        _steps(model, opt, range(SAVE_AT), rows, micro)
        ckpt = f"{out}.{name}.ckpt"
        dcp.save(mup2.optim.dcp.get_state_dict(model, opt), checkpoint_id=ckpt)
        _steps(model, opt, range(SAVE_AT, STEPS), rows, micro)
        final = _full(model)
        model = tanh_net()
        with torch.no_grad():
            for q in model.parameters():
                q.mul_(-1.0)
        opt = _build(name, model, shard)
        sd = mup2.optim.dcp.get_state_dict(model, opt)
        dcp.load(sd, checkpoint_id=ckpt)
        mup2.optim.dcp.set_state_dict(model, opt, sd)
        _steps(model, opt, range(SAVE_AT, STEPS), rows, micro)
        results[name] = (final, _full(model))
    if rank == 0:
        torch.save(results, out)
    leave_gloo()


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    results: dict[str, Any] = rank0_results(_worker, tmp_path_factory.mktemp("fsdp"), WORLD)
    return results


@pytest.mark.parametrize("name", CONFIGS)
def test_fsdp_matches_full_batch_single_process(name: str, fsdp_results: dict[str, Any]) -> None:
    final, _ = fsdp_results[name]
    want = reference(name.removesuffix("-accum").removesuffix("-mp"))
    atol = MP_ATOL if name.endswith("-mp") else 1e-10
    w0 = [q.detach() for q in tanh_net().parameters()]
    moved = max(float((a - b).abs().max()) for a, b in zip(want, w0))
    assert moved > 1e-3  # the run really trains
    for got, ref in zip(final, want):
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, rtol=0, atol=atol), float((got - ref).abs().max())


@pytest.mark.parametrize("name", CONFIGS)
def test_fsdp_dcp_resume_is_bit_exact(name: str, fsdp_results: dict[str, Any]) -> None:
    final, resumed = fsdp_results[name]
    for a, b in zip(final, resumed):
        assert torch.equal(a, b)
