"""Gradient accumulation for SAM: on one device and under 2-process DDP (gloo) the accumulated
step equals the step on the union of the micro-batches; gradients are reduced once per pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import mup2
from harness import Batch, join_gloo, leave_gloo, rank0_results, sam_step, split, tanh_net

WORLD, STEPS, BATCH = 2, 3, 16


def _batch(step: int) -> Batch:
    g = torch.Generator().manual_seed(200 + step)
    x = torch.randn(BATCH, 5, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (BATCH,), generator=g)


def _opt(name: str, net: nn.Module, **kw: Any) -> mup2.SAM:
    with torch.device("meta"):
        base = tanh_net(8)
    adam = name == "lightsam"
    p = mup2.Parametrization.infer(net, base, "mup-adam" if adam else "mup-sgd")
    groups = p.param_groups(net, lr=0.05)
    if adam:
        return mup2.LightSAM(groups, "adam", lr=0.02, rho=0.01, **kw)
    return mup2.SAM(groups, torch.optim.SGD, rho=0.1, rule=name, momentum=0.9, **kw)


def _train(name: str, micro: int | None, batches: list[Batch]) -> list[Tensor]:
    model = tanh_net()
    opt = _opt(name, model)

    def loss_fn(b: Batch) -> Tensor:
        return nn.functional.cross_entropy(model(b[0]), b[1])

    for batch in batches:
        sam_step(opt, loss_fn, batch, micro)
    return [q.detach() for q in model.parameters()]


@pytest.mark.parametrize("name", ["sam", "asam", "lightsam"])
def test_accumulated_step_equals_large_batch(name: str) -> None:
    batches = [_batch(s) for s in range(STEPS)]
    want = _train(name, None, batches)
    got = _train(name, 4, batches)
    w0 = [q.detach() for q in tanh_net().parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(want, w0)) > 1e-3
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), float((a - b).abs().max())


def test_one_micro_batch_is_step_bit_for_bit() -> None:
    batches = [_batch(s) for s in range(STEPS)]
    for a, b in zip(_train("sam", 1, batches), _train("sam", None, batches)):
        assert torch.equal(a, b)


def _worker(rank: int, port: int, out: str) -> None:
    join_gloo(rank, port, WORLD)
    results: dict[str, Any] = {}
    for sync in (True, False):
        for micro in (None, 2):
            model = tanh_net()
            ddp = DistributedDataParallel(model)
            reductions = [0]

            def hook(state, bucket, count=reductions):  # type: ignore[no-untyped-def]
                # unannotated: DDP rejects string annotations (from __future__ import annotations)
                count[0] += 1
                t = bucket.buffer().div_(WORLD)
                return dist.all_reduce(t, async_op=True).get_future().then(lambda f: f.value()[0])

            ddp.register_comm_hook(None, hook)
            opt = _opt("sam", ddp, model=ddp, sync_perturbation=sync)

            def loss_fn(b: Batch, ddp: nn.Module = ddp) -> Tensor:
                return nn.functional.cross_entropy(ddp(b[0]), b[1])

            for step in range(STEPS):
                sam_step(opt, loss_fn, split(_batch(step), WORLD)[rank], micro)
            params = [q.detach().clone() for q in model.parameters()]
            results[f"{sync}-{micro}"] = (params, reductions[0])
    if rank == 0:
        torch.save(results, out)
    leave_gloo()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    results: dict[str, Any] = rank0_results(_worker, tmp_path_factory.mktemp("accum"), WORLD)
    return results


def test_ddp_accumulation_shared_perturbation_equals_large_batch(
    ddp_results: dict[str, Any],
) -> None:
    got, reductions = ddp_results["True-2"]
    want = _train("sam", None, [_batch(s) for s in range(STEPS)])  # one process, all 16 rows
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert reductions == 2 * STEPS  # one bucket, reduced in the last micro-batch of each pass


def test_ddp_accumulation_per_replica_equals_unaccumulated(ddp_results: dict[str, Any]) -> None:
    got, reductions = ddp_results["False-2"]
    want, _ = ddp_results["False-None"]  # the per-replica step on each rank's 8 rows at once
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert reductions == STEPS  # the first pass is never reduced


def test_ddp_accumulation_modes_differ(ddp_results: dict[str, Any], tmp_path: Path) -> None:
    shared, _ = ddp_results["True-2"]
    per_replica, _ = ddp_results["False-2"]
    assert any(not torch.allclose(a, b) for a, b in zip(shared, per_replica))
