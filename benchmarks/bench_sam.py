"""CPU benchmark: one mup2.SAM step vs. two plain SGD steps vs. pytorch-optimizer's SAM.

Run ``.venv/bin/python benchmarks/bench_sam.py [--quick] [--json out.json]``; see
``benchmarks/README.md`` for what is measured and how to read the output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Any

import pytorch_optimizer
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

import mup2

LR, MOMENTUM, RHO = 0.01, 0.9, 0.05
#: Largest allowed |w_mup2 - w_pto| / |w_sgd - w_0| after a few steps (float64).
EQUIV_RTOL = 1e-5
#: Issue 2's targets: optimizer-side overhead ratio, and extra memory in parameter sizes.
TARGET_RATIO, TARGET_BUFFERS = 0.5, 1.0
#: Allowance on top of the buffers for bookkeeping tensors (per-tensor scale factors).
BOOKKEEPING = 0.01


# -- workloads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A model factory and one fixed batch (data loading is not timed)."""

    name: str
    build: Callable[[], nn.Module]
    x: Tensor
    y: Tensor


def deep_mlp(depth: int = 48, width: int = 64, classes: int = 10) -> nn.Module:
    """``depth`` Linear layers of ``width`` (2 * depth small tensors), ReLU, He-normal init."""
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        lin = nn.Linear(width, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


def small_convnet(classes: int = 10) -> nn.Module:
    """Five Conv3x3-BatchNorm-ReLU blocks, 16-32-64-128-128 channels, 32x32 input to 4x4."""
    widths, strides = (3, 16, 32, 64, 128, 128), (2, 1, 2, 2, 1)
    layers: list[nn.Module] = []
    for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides, strict=True):
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], classes)
    )


def workloads() -> list[Workload]:
    gen = torch.Generator().manual_seed(0)
    return [
        Workload(
            "deep-mlp: 48 Linear(64), batch 64",
            deep_mlp,
            torch.randn(64, 64, generator=gen),
            torch.randint(0, 10, (64,), generator=gen),
        ),
        Workload(
            "convnet: 5 Conv-BN-ReLU, 32x32x3, batch 32",
            small_convnet,
            torch.randn(32, 3, 32, 32, generator=gen),
            torch.randint(0, 10, (32,), generator=gen),
        ),
    ]


# -- contestants ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contestant:
    """An optimizer recipe. ``sam=False`` is the baseline: two passes, then ``step()``."""

    name: str
    make: Callable[[nn.Module], torch.optim.Optimizer]
    sam: bool = True


def _sgd(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM)


def _mup2_sam(**kw: Any) -> Callable[[nn.Module], torch.optim.Optimizer]:
    def make(m: nn.Module) -> torch.optim.Optimizer:
        return mup2.SAM(m.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM, **kw)

    return make


def _pto_sam(adaptive: bool, foreach: bool | None) -> Callable[[nn.Module], torch.optim.Optimizer]:
    def make(m: nn.Module) -> torch.optim.Optimizer:
        return pytorch_optimizer.SAM(
            m.parameters(),
            torch.optim.SGD,
            rho=RHO,
            adaptive=adaptive,
            foreach=foreach,
            lr=LR,
            momentum=MOMENTUM,
        )

    return make


BASELINE = "2x fwd/bwd + SGD"
CONTESTANTS = [
    Contestant(BASELINE, _sgd, sam=False),
    Contestant("mup2 sam", _mup2_sam()),
    Contestant("mup2 sam subtract", _mup2_sam(restore="subtract")),
    Contestant("pto sam", _pto_sam(adaptive=False, foreach=None)),
    Contestant("pto sam foreach", _pto_sam(adaptive=False, foreach=True)),
    Contestant("mup2 asam", _mup2_sam(rule="asam")),
    Contestant("pto asam", _pto_sam(adaptive=True, foreach=None)),
    Contestant("pto asam foreach", _pto_sam(adaptive=True, foreach=True)),
]
#: (mup2, pytorch-optimizer, judged against the target?): pytorch-optimizer's default on CPU is
#: its per-tensor loop; ``foreach=True`` is opt-in there and is reported for information.
PAIRS = [
    ("mup2 sam", "pto sam", True),
    ("mup2 asam", "pto asam", True),
    ("mup2 sam", "pto sam foreach", False),
    ("mup2 asam", "pto asam foreach", False),
]


class Runner:
    """One contestant on its own copy of a workload's model (same initial weights for all)."""

    def __init__(self, c: Contestant, w: Workload, state: dict[str, Tensor]) -> None:
        self.c, self.w = c, w
        self.model = w.build()
        self.model.load_state_dict(state)
        self.opt: Any = c.make(self.model)
        self.params = list(self.model.parameters())

    def backward(self) -> None:
        torch.autograd.backward(F.cross_entropy(self.model(self.w.x), self.w.y))

    def step(self) -> None:
        """One full training step: two forward/backward passes and one descent."""
        self.opt.zero_grad()
        self.backward()
        if self.c.sam:
            self.opt.first_step(zero_grad=True)
        else:
            self.opt.zero_grad()
        self.backward()
        if self.c.sam:
            self.opt.second_step()
        else:
            self.opt.step()

    def optimizer_side(self) -> None:
        """Only the optimizer's part of a step, on the gradients left in ``p.grad``."""
        if self.c.sam:
            self.opt.first_step()
            self.opt.second_step()
        else:
            self.opt.step()


# -- equal work -------------------------------------------------------------------------------


def _dist(a: list[Tensor], b: list[Tensor]) -> float:
    return math.sqrt(sum(float((x - y).double().pow(2).sum()) for x, y in zip(a, b, strict=True)))


def check_equal_work(w: Workload, steps: int = 3) -> dict[str, float]:
    """Assert that both libraries compute the same weights after ``steps`` full steps.

    Runs in float64: in float32 the deep MLP amplifies rounding-level differences in ``eps`` to
    ~1e-4, which would hide whether the formulas agree. Distances are relative to the total SGD
    update ``|w_sgd - w_0|``, not to the much larger weights. SAM is compared as is; ASAM with
    ``eta=0``, where mup2's ``(|w| + eta)**2`` equals pytorch-optimizer's ``w**2``. SAM must also
    land clearly away from plain SGD, else the check would be vacuous.
    """
    build = w.build
    w64 = Workload(w.name, lambda: build().double(), w.x.double(), w.y)
    torch.manual_seed(0)
    state = w64.build().state_dict()
    recipes = {
        "sgd": Contestant("", _sgd, sam=False),
        "mup2 sam": Contestant("", _mup2_sam()),
        "pto sam": Contestant("", _pto_sam(adaptive=False, foreach=None)),
        "pto sam foreach": Contestant("", _pto_sam(adaptive=False, foreach=True)),
        "mup2 asam eta=0": Contestant("", _mup2_sam(rule="asam", eta=0.0)),
        "pto asam": Contestant("", _pto_sam(adaptive=True, foreach=None)),
    }
    final: dict[str, list[Tensor]] = {}
    for name, c in recipes.items():
        r = Runner(c, w64, state)
        if not final:
            final["init"] = [p.detach().clone() for p in r.params]
        for _ in range(steps):
            r.step()
        final[name] = [p.detach().clone() for p in r.params]
    unit = _dist(final["sgd"], final["init"])
    diffs = {
        "sam, mup2 vs pto": _dist(final["mup2 sam"], final["pto sam"]) / unit,
        "sam, mup2 vs pto foreach": _dist(final["mup2 sam"], final["pto sam foreach"]) / unit,
        "asam eta=0, mup2 vs pto": _dist(final["mup2 asam eta=0"], final["pto asam"]) / unit,
        "sam vs sgd (must be large)": _dist(final["mup2 sam"], final["sgd"]) / unit,
    }
    for key, d in diffs.items():
        if key.startswith("sam vs sgd"):
            if not d > 1e-2:
                raise AssertionError(f"{w.name}: SAM lands too close to SGD ({d:.1e})")
        elif not d <= EQUIV_RTOL:
            raise AssertionError(f"{w.name}: {key}: weights differ by {d:.1e} > {EQUIV_RTOL}")
    return diffs


# -- timing -----------------------------------------------------------------------------------


#: With one torch thread all work runs on the calling thread, so its CPU time is the cost,
#: immune to other processes preempting it on a shared machine; with more, wall time.
_clock = time.thread_time_ns


def _ms_per_call(fn: Callable[[], None], iters: int) -> float:
    t0 = _clock()
    for _ in range(iters):
        fn()
    return (_clock() - t0) / iters / 1e6


def time_rounds(
    runners: dict[str, Runner], fn: Callable[[Runner], Callable[[], None]], rounds: int, iters: int
) -> dict[str, list[float]]:
    """ms per call of every contestant in each round; contestants interleaved, order rotated."""
    names = list(runners)
    for name in names:  # warm-up
        _ms_per_call(fn(runners[name]), max(2, iters // 4))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(_ms_per_call(fn(runners[name]), iters))
    return samples


def medians(samples: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Median time, and median over rounds of the paired overhead over the baseline."""
    base = samples[BASELINE]
    return (
        {n: statistics.median(s) for n, s in samples.items()},
        {
            n: statistics.median(a - b for a, b in zip(s, base, strict=True))
            for n, s in samples.items()
        },
    )


# -- memory -----------------------------------------------------------------------------------


def _tensors(obj: Any, seen: set[int]) -> Iterator[Tensor]:
    """Tensors reachable from ``obj`` through optimizers' attributes, dicts, lists and tuples."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(k, seen)
            yield from _tensors(v, seen)
    elif isinstance(obj, list | tuple | set):
        for v in obj:
            yield from _tensors(v, seen)
    elif isinstance(obj, torch.optim.Optimizer):
        yield from _tensors(vars(obj), seen)


def held_bytes(r: Runner) -> int:
    """Bytes the optimizer holds beyond the parameters and SGD's momentum buffers."""
    base = getattr(r.opt, "base_optimizer", r.opt)
    skip = {p.untyped_storage().data_ptr() for p in r.params}
    skip |= {
        st["momentum_buffer"].untyped_storage().data_ptr()
        for st in base.state.values()
        if "momentum_buffer" in st
    }
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors(r.opt, set())
    }
    return sum(n for ptr, n in storages.items() if ptr not in skip)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def transient_peak_bytes(r: Runner) -> int:
    """Peak of bytes allocated and not yet freed during one optimizer-side call."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        r.optimizer_side()
    assert prof.profiler is not None
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One contestant on one workload: times in ms, memory in parameter sizes ``P``."""

    contestant: str
    step_ms: float
    step_overhead_ms: float
    opt_ms: float
    opt_overhead_ms: float
    held: float
    peak: float


def run_workload(w: Workload, quick: bool) -> dict[str, Any]:
    equal = check_equal_work(w)
    torch.manual_seed(0)
    state = w.build().state_dict()
    runners = {c.name: Runner(c, w, state) for c in CONTESTANTS}
    params = runners[BASELINE].params
    p_bytes = sum(p.numel() * p.element_size() for p in params)
    fwd_bwd_ms = min(_ms_per_call(runners[BASELINE].backward, 3) for _ in range(3))
    # Each timing sample lasts about sample_s, so both workloads see comparable noise.
    sample_s, rounds = (0.03, 7) if quick else (0.1, 21)
    step_iters = max(1, round(sample_s / (2 * fwd_bwd_ms / 1e3)))
    step, step_over = medians(time_rounds(runners, lambda r: r.step, rounds, step_iters))
    for r in runners.values():  # fresh gradients for the optimizer-side calls
        r.opt.zero_grad()
        r.backward()
    probe_ms = _ms_per_call(runners["pto sam"].optimizer_side, 5)
    opt_iters = max(5, round(sample_s / (probe_ms / 1e3)))
    opt, opt_over = medians(time_rounds(runners, lambda r: r.optimizer_side, rounds, opt_iters))
    base_peak = transient_peak_bytes(runners[BASELINE])
    rows = []
    for name, r in runners.items():
        held = held_bytes(r)
        peak = held + transient_peak_bytes(r) - base_peak
        times = (step[name], step_over[name], opt[name], opt_over[name])
        rows.append(Row(name, *times, held / p_bytes, peak / p_bytes))
    return {
        "workload": w.name,
        "tensors": len(params),
        "parameters": sum(p.numel() for p in params),
        "param_bytes": p_bytes,
        "fwd_bwd_ms": fwd_bwd_ms,
        "rounds": rounds,
        "step_iters": step_iters,
        "opt_iters": opt_iters,
        "equal_work": equal,
        "rows": [asdict(row) for row in rows],
    }


def _ratio(res: dict[str, Any], key: str, a: str, b: str) -> float:
    rows = {row["contestant"]: row for row in res["rows"]}
    return float(rows[a][key] / rows[b][key])


def report(res: dict[str, Any]) -> None:
    print(f"\n== {res['workload']}")
    print(
        f"   {res['tensors']} tensors, {res['parameters']:,} parameters "
        f"(P = {res['param_bytes'] / 2**20:.2f} MiB); one fwd/bwd {res['fwd_bwd_ms']:.2f} ms; "
        f"median of {res['rounds']} rounds of {res['step_iters']} steps / "
        f"{res['opt_iters']} optimizer-side calls"
    )
    print("   same weights after 3 steps (float64), |w_a - w_b| / |w_sgd - w_0|:")
    print("     " + "; ".join(f"{k} {d:.1e}" for k, d in res["equal_work"].items()))
    head = ("", "step ms", "+ms", "opt-side ms", "+ms", "held/P", "peak/P")
    print("   {:<18} {:>9} {:>7} {:>11} {:>7} {:>7} {:>7}".format(*head))
    for row in res["rows"]:
        print(
            "   {contestant:<18} {step_ms:>9.2f} {step_overhead_ms:>7.2f} {opt_ms:>11.3f} "
            "{opt_overhead_ms:>7.3f} {held:>7.2f} {peak:>7.2f}".format(**row)
        )
    print("   overhead ratio mup2 / pytorch-optimizer:  optimizer-side   full step")
    for a, b, _ in PAIRS:
        print(
            f"     {a:<10} / {b:<17} {_ratio(res, 'opt_overhead_ms', a, b):>14.2f} "
            f"{_ratio(res, 'step_overhead_ms', a, b):>11.2f}"
        )


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Judge the targets on the optimizer-side overhead ratios and on the held memory."""
    checks: list[tuple[str, float, bool | None]] = []
    for res in results:
        short = res["workload"].split(":")[0]
        for a, b, judged in PAIRS:
            ratio = _ratio(res, "opt_overhead_ms", a, b)
            ok = ratio <= TARGET_RATIO if judged else None
            checks.append((f"{short}: {a} / {b} overhead", ratio, ok))
        for row in res["rows"]:
            if row["contestant"].startswith("mup2"):
                name, held = row["contestant"], row["held"]
                ok = held <= TARGET_BUFFERS + BOOKKEEPING
                checks.append((f"{short}: {name} held extra memory / P", held, ok))
    print(
        f"\n== Summary. Targets: optimizer-side overhead ratio <= {TARGET_RATIO} "
        f"(vs. pytorch-optimizer's default); held extra memory <= {TARGET_BUFFERS:g} P"
    )
    for key, value, ok in checks:
        verdict = "info" if ok is None else ("PASS" if ok else "FAIL")
        print(f"   {verdict:<4}  {key}: {value:.2f}")
    met = all(ok for _, _, ok in checks if ok is not None)
    print(f"   targets {'met' if met else 'NOT met'}")
    return {"checks": [{"check": k, "value": v, "pass": ok} for k, v, ok in checks], "met": met}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds (about 30 s)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global _clock
    _clock = time.thread_time_ns if args.threads == 1 else time.perf_counter_ns
    meta = {
        "mup2": mup2.__version__,
        "pytorch-optimizer": version("pytorch-optimizer"),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "clock": "thread CPU time" if args.threads == 1 else "wall time",
        "quick": args.quick,
        "load average": f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus",
    }
    print(", ".join(f"{k} {v}" for k, v in meta.items()))
    print(f"SGD lr={LR} momentum={MOMENTUM}, SAM rho={RHO}; pto = pytorch_optimizer.SAM")
    results = []
    for w in workloads():
        results.append(run_workload(w, args.quick))
        report(results[-1])
    summary = summarize(results)
    meta["load average after"] = f"{os.getloadavg()[0]:.1f}"
    print(f"   load average: {meta['load average']} before, {meta['load average after']} after")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "workloads": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
