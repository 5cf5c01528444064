"""One training run from a validated :class:`mup2.config.TrainConfig`; a plain library call.

:func:`train` builds the model at ``model.width`` and its base on the ``meta`` device, applies the
scheme (:class:`mup2.Parametrization`), wraps the base optimizer in :class:`mup2.SAM` (``rho = 0``
is the plain base optimizer) and trains for ``epochs``, evaluating on the test split after every
epoch. It keeps no global state: torch's global RNG is forked for the run and restored after.

With a run directory it writes ``config.json``, ``metrics.jsonl`` (one JSON object per epoch),
``checkpoint.pt`` after every epoch (model, optimizer with SAM and base state, schedulers, RNG
states, epoch, metrics) and ``result.json``; calling :func:`train` again on the same directory
resumes after the last completed epoch and gives bitwise the result of an uninterrupted run (on
CPU; CUDA kernels may be nondeterministic). A non-finite training loss (or test loss) stops the
run with status ``"unstable"``, keeping the metrics of the last finite epoch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler
from tqdm import tqdm

from mup2.checkpoint import load_checkpoint, save_checkpoint
from mup2.config import (
    CIFARData,
    ConfigError,
    DataConfig,
    FashionMNISTData,
    IDXData,
    SAMConfig,
    ScheduleConfig,
    SyntheticData,
    TrainConfig,
)
from mup2.data import (
    Augment,
    DataSplits,
    Loader,
    derive_seed,
    load_cifar,
    load_fashion_mnist,
    load_idx_dataset,
    synthetic_classification,
    with_label_noise,
)
from mup2.errors import UserError, check_instance
from mup2.losses import mean_loss, sum_loss
from mup2.models.registry import build_model
from mup2.optim.families import family_of_variant, get_family
from mup2.optim.lightsam import LightSAM, Variant
from mup2.optim.onepass import RWP, onepass_optimizer
from mup2.optim.rho_schedule import LatePhase, RhoScheduler
from mup2.optim.rules import get_rule
from mup2.optim.sam import SAM
from mup2.parametrization.parametrize import Parametrization
from mup2.parametrization.shapes import role_overrides
from mup2.precision import at_least_fp32, autocast, grad_scaler
from mup2.progress import progress_bar

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "RESULT",
    "EpochMetrics",
    "ResumeError",
    "RunResult",
    "build_rho_scheduler",
    "build_scheduler",
    "load_data",
    "make_model",
    "make_optimizer",
    "prepare_data",
    "resolve_device",
    "train",
    "train_loader",
]

CHECKPOINT, CONFIG, METRICS, RESULT = "checkpoint.pt", "config.json", "metrics.jsonl", "result.json"
Status = Literal["ok", "unstable"]
#: Keys every checkpoint holds (:func:`mup2.checkpoint.load_checkpoint` checks them).
_CHECKPOINT_KEYS = (
    "config",
    "epoch",
    "status",
    "diverged_at",
    "metrics",
    "seconds",
    "model",
    "optimizer",
    "scheduler",
    "rng",
)
#: Keys that may differ between a checkpoint's config and the resuming one.
_RESUME_FREE = frozenset({"epochs", "device", "progress", "checkpoint"})
#: Keys added to the config since checkpoints were first written, with the value a checkpoint
#: that lacks one was trained with.
_ADDED_KEYS: dict[str, Any] = {
    "loss": "cross-entropy",
    "sam.schedule": "constant",
    "sam.every": 1,
    "sam.between": "sgd",
    "sam.alpha": 0.7,
    "sam.layerwise": False,
}


class ResumeError(UserError, ValueError):
    """The run directory's checkpoint cannot be resumed with this config."""


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch (1-based). Train loss/accuracy: means over the epoch's batches at the
    unperturbed point in train mode (the loss includes label smoothing); test: the whole test
    split in eval mode, the config's ``loss`` without label smoothing. ``lr``: the base LR after
    the epoch's last step."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class RunResult:
    """What :func:`train` returns. ``seconds``: training and evaluation time over all sessions of
    the run. ``diverged_at``: ``(epoch, step)`` of the first non-finite loss (step ``-1``: the
    test loss)."""

    status: Status
    metrics: list[EpochMetrics]
    seconds: float
    diverged_at: tuple[int, int] | None = None

    @property
    def test_accuracy(self) -> float | None:
        """Test accuracy of the last finite epoch (``None`` if there is none)."""
        return self.metrics[-1].test_accuracy if self.metrics else None

    @property
    def test_loss(self) -> float | None:
        return self.metrics[-1].test_loss if self.metrics else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "seconds": self.seconds,
            "diverged_at": list(self.diverged_at) if self.diverged_at else None,
            "metrics": [asdict(m) for m in self.metrics],
        }


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise ``torch.device(name)``, which must
    exist here (:class:`mup2.config.ConfigError` otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        found = torch.cuda.device_count()
        raise ConfigError(
            f"device: {name!r}, but this machine has {found or 'no'} CUDA GPU"
            f"{'s' if found != 1 else ''}; set device = 'cpu' or 'auto'"
        )
    return device


def load_data(cfg: DataConfig) -> DataSplits:
    """The dataset a config names, cut to ``train_size``/``test_size``."""
    if isinstance(cfg, SyntheticData):
        return synthetic_classification(
            cfg.train_size, cfg.test_size, cfg.shape, cfg.num_classes, cfg.noise, cfg.seed
        )
    if isinstance(cfg, FashionMNISTData):
        splits = load_fashion_mnist(cfg.root)
    elif isinstance(cfg, IDXData):
        splits = load_idx_dataset(cfg.root, num_classes=cfg.num_classes)
    elif isinstance(cfg, CIFARData):
        splits = load_cifar(10 if cfg.name == "cifar10" else 100, cfg.root)
    else:  # pragma: no cover - the config's union is closed
        raise TypeError(f"unknown data config {type(cfg).__name__}")
    return splits.head(cfg.train_size, cfg.test_size)


def prepare_data(config: TrainConfig, data: DataSplits | None = None) -> DataSplits:
    """The splits a run trains on: ``data`` (else :func:`load_data` of ``config.data``) cut to
    ``train_size``/``test_size``, with the config's label noise on the training split."""
    d = config.data
    splits = (data if data is not None else load_data(d)).head(d.train_size, d.test_size)
    return with_label_noise(splits, d.label_noise, d.label_noise_seed)


def make_model(
    config: TrainConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    parametrization: Parametrization | None = None,
) -> tuple[nn.Module, Parametrization]:
    """The model (initialized under ``config.scheme`` from ``config.seed``, on the CPU) and its
    parametrization against the base width (built on the ``meta`` device). At the base width,
    where the shapes tell no roles, a SAM rule that perturbs by role gets each tensor's role from
    the model at twice the width (:func:`mup2.parametrization.shapes.role_overrides`).

    ``parametrization``: the one this function returned for a config that differs from
    ``config`` at most in ``seed``, LR and ``rho`` (inferring again would give the same one). It
    is reused, and when it draws every tensor the model is allocated without PyTorch's default
    init, which would be overwritten (a batched bundle builds many models of one width)."""
    m = config.model
    kwargs = m.kwargs(config.scheme)
    if parametrization is not None:
        draws_all = all(t.init.kind != "keep" for t in parametrization.tensors.values())
        with torch.device("meta" if draws_all else "cpu"):
            model = build_model(
                m.name, m.width, input_shape=input_shape, num_classes=num_classes, **kwargs
            )
        if draws_all:
            model = model.to_empty(device="cpu")
        parametrization.init_(model, seed=config.seed)
        return model, parametrization
    model = build_model(m.name, m.width, input_shape=input_shape, num_classes=num_classes, **kwargs)
    # roles matter at base width for a rule that perturbs by role, and for Muon (hidden only)
    by_role = get_rule(config.sam.sam_rule(config.optimizer.name)).roles is not None
    by_role = by_role or get_family(config.optimizer.name).like == "muon"
    overrides = None
    base_depth = getattr(m, "base_depth", None)  # depth-aware: the base at its own depth
    base_kw = kwargs if base_depth is None else {**kwargs, "depth": base_depth}
    with torch.device("meta"):
        base = build_model(
            m.name, config.base_width, input_shape=input_shape, num_classes=num_classes, **base_kw
        )
        if by_role and m.width == config.base_width:
            wider = build_model(
                m.name, 2 * m.width, input_shape=input_shape, num_classes=num_classes, **kwargs
            )
            overrides = role_overrides(model, wider)
    p = Parametrization.infer(
        model,
        base,
        config.scheme,
        overrides=overrides,
        wd_policy=config.optimizer.wd_policy,
        base_depth=base_depth,
        alpha=getattr(m, "alpha", 1.0),
    )
    p.init_(model, seed=config.seed)
    return model, p


def train_loader(
    config: TrainConfig, splits: DataSplits, device: torch.device | str = "cpu"
) -> Loader:
    """The training batches of a run: its own seed's order (``derive_seed(seed, 1)``) and
    augmentation, shuffled, the last incomplete batch dropped."""
    return Loader(
        splits.train,
        config.batch_size,
        mean=splits.mean,
        std=splits.std,
        shuffle=True,
        drop_last=True,
        augment=Augment(config.data.crop_padding, config.data.hflip),
        seed=derive_seed(config.seed, 1),
        device=device,
    )


def make_optimizer(config: TrainConfig, model: nn.Module, p: Parametrization) -> SAM:
    """:class:`mup2.SAM` (or :class:`mup2.LightSAM` for ``sam.rule = "lightsam"``, the one-pass
    :class:`mup2.MSAM`/:class:`mup2.RWP` for ``"msam"``/``"rwp"``, RWP's noise seeded by
    ``derive_seed(seed, 3)``) over the μP param groups of ``model``."""
    o, s = config.optimizer, config.sam
    groups = p.param_groups(model, lr=o.lr, weight_decay=o.weight_decay)
    cheap: dict[str, Any] = {"every": s.every, "between": s.between, "alpha": s.alpha}
    cheap["layerwise"] = s.layerwise
    family = get_family(o.name)
    kw = {k: getattr(o, k) for k in family.keywords}
    rule = get_rule(s.sam_rule(o.name))
    if rule.lightsam is not None:
        if family_of_variant(rule.lightsam) is not family:  # Muon: the variant's ascent only
            kw["base_optimizer"] = family.optimizer
        return LightSAM(
            groups,
            cast(Variant, rule.lightsam),
            lr=o.lr,
            rho=s.rho,
            scaling=s.scaling,
            bias_correction=s.bias_correction,
            ascent_beta1=s.ascent_beta1,
            model=model,
            **cheap,
            **kw,
        )
    if rule.one_pass:
        cls = onepass_optimizer(rule)
        extra: dict[str, Any] = {"seed": derive_seed(config.seed, 3)} if cls is RWP else {}
        return cls(
            groups,
            family.optimizer,
            rho=s.rho,
            scaling=s.scaling,
            model=model,
            **extra,
            **family.kwargs(lr=o.lr, weight_decay=o.weight_decay, **kw),
        )
    return SAM(
        groups,
        family.optimizer,
        rho=s.rho,
        rule=rule.name,
        scaling=s.scaling,
        eta=s.eta,
        model=model,
        **cheap,
        **family.kwargs(lr=o.lr, weight_decay=o.weight_decay, **kw),
    )


def build_rho_scheduler(optimizer: SAM, cfg: SAMConfig, total_steps: int) -> RhoScheduler | None:
    """The ρ schedule of ``sam.schedule``, stepped once per optimizer step: ``None`` for
    ``constant``, :class:`mup2.optim.LatePhase` over ``total_steps`` for ``late:F``."""
    fraction = cfg.late_fraction
    if fraction is None:
        return None
    return LatePhase(optimizer, total_steps, fraction)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
) -> lr_scheduler.LRScheduler:
    """The base-LR schedule as torch schedulers, stepped once per optimizer step: ``LinearLR``
    warmup chained by ``SequentialLR`` to ``ConstantLR``, ``MultiStepLR`` (milestones in
    absolute epochs) or ``CosineAnnealingLR`` (reaching ``min_lr_factor * lr`` after the last
    step). μP multipliers are applied at step time, so the schedulers see the base LR."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    total = epochs * steps_per_epoch
    main: lr_scheduler.LRScheduler
    if cfg.name == "constant":
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif cfg.name == "step":
        steps = [m * steps_per_epoch - warmup for m in cfg.milestones]  # counted after warmup
        main = lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=cfg.gamma)
    else:
        main = lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, total - warmup), eta_min=cfg.min_lr_factor * lr
        )
    if warmup == 0:
        return main
    ramp = lr_scheduler.LinearLR(
        optimizer, start_factor=cfg.warmup_start_factor, end_factor=1.0, total_iters=warmup
    )
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    on_epoch: Callable[[EpochMetrics], object] | None = None,
    data: DataSplits | None = None,
) -> RunResult:
    """Run (or resume) one training run; see the module docstring.

    ``run_dir``: where files and checkpoints go (``None``: nothing is written). ``on_epoch`` is
    called after each epoch's checkpoint and metrics are written; an exception it raises stops
    the run and propagates (resuming later continues from that epoch). ``data``: an already
    loaded dataset to use instead of loading ``config.data`` (for many runs in one process); it
    is cut to ``data.train_size``/``data.test_size`` like a loaded one.
    """
    check_instance(
        "config",
        config,
        TrainConfig,
        "a TrainConfig (mup2.config.parse_config(dict), load_config(path))",
    )
    device = resolve_device(config.device)
    splits = prepare_data(config, data)
    if config.batch_size > len(splits.train):
        raise ConfigError(
            f"batch_size: {config.batch_size} is more than the {len(splits.train)} training "
            "examples; lower batch_size (or use more data)"
        )
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(config.seed, 2))
        return _Run(config, splits, device, run_dir, on_epoch).run()


class _Run:
    """The state of one run: model, optimizer, scheduler, loaders and files."""

    def __init__(
        self,
        config: TrainConfig,
        splits: DataSplits,
        device: torch.device,
        run_dir: str | Path | None,
        on_epoch: Callable[[EpochMetrics], object] | None,
    ) -> None:
        self.cfg, self.device, self.on_epoch = config, device, on_epoch
        self.dir = Path(run_dir) if run_dir is not None else None
        model, self.p = make_model(config, splits.input_shape, splits.num_classes)
        self.model = model.to(device)
        self.opt = make_optimizer(config, self.model, self.p)
        self.train_loader = train_loader(config, splits, device)
        self.test_loader = Loader(
            splits.test, config.eval_batch_size, mean=splits.mean, std=splits.std, device=device
        )
        self.sched = build_scheduler(
            self.opt, config.schedule, config.epochs, len(self.train_loader), config.optimizer.lr
        )
        steps = config.epochs * len(self.train_loader)
        self.rho_sched = build_rho_scheduler(self.opt, config.sam, steps)
        self.scaler = grad_scaler(config.precision, device)
        self.metrics: list[EpochMetrics] = []
        self.seconds = 0.0
        self.status: Status = "ok"
        self.diverged_at: tuple[int, int] | None = None

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        start = self._resume() if self.dir is not None else None
        if self.dir is not None and start is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / CONFIG).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
            (self.dir / METRICS).write_text("")
        for epoch in range((start or 0) + 1, self.cfg.epochs + 1):
            if self.status != "ok":
                break
            t0 = time.perf_counter()
            out = self._train_epoch(epoch)
            if isinstance(out, int):
                self._diverged(epoch, out, time.perf_counter() - t0)
                break
            test_loss, test_acc = self._evaluate()
            seconds = time.perf_counter() - t0
            self.seconds += seconds
            if not math.isfinite(test_loss):
                self._diverged(epoch, -1, 0.0)
                break
            m = EpochMetrics(epoch, *out, test_loss, test_acc, self._lr(), seconds)
            self.metrics.append(m)
            self._save(epoch)
            self._log_line({"event": "epoch", **asdict(m)})
            if self.cfg.progress:
                tqdm.write(
                    f"epoch {epoch}/{self.cfg.epochs}  train loss {m.train_loss:.4f} "
                    f"acc {m.train_accuracy:.4f}  test loss {m.test_loss:.4f} "
                    f"acc {m.test_accuracy:.4f}  lr {m.lr:.4g}  {m.seconds:.1f}s"
                )
            if self.on_epoch is not None:
                self.on_epoch(m)
        result = RunResult(self.status, list(self.metrics), self.seconds, self.diverged_at)
        if self.dir is not None:
            (self.dir / RESULT).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        return result

    def _train_epoch(self, epoch: int) -> tuple[float, float] | int:
        """``(mean loss, accuracy)``, or the step at which the loss became non-finite."""
        model, opt, cfg, scaler = self.model, self.opt, self.cfg, self.scaler
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = progress_bar(  # off outside a terminal: the epoch's line says it all
            self.train_loader.epoch(epoch),
            enabled=cfg.progress,
            total=len(self.train_loader),
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
        )
        for step, (x, y) in enumerate(batches):
            first: list[Tensor] = []

            def closure(x: Tensor = x, y: Tensor = y, first: list[Tensor] = first) -> Tensor:
                opt.zero_grad(set_to_none=True)
                with autocast(cfg.precision, self.device):
                    logits = model(x)
                    loss = mean_loss(at_least_fp32(logits), y, cfg.loss, cfg.label_smoothing)
                torch.autograd.backward(loss if scaler is None else scaler.scale(loss))
                if not first:  # the first pass is at the unperturbed point
                    first.append(logits.detach())
                return loss

            loss = opt.step(closure, scaler=scaler)
            if scaler is not None:
                scaler.update()
            self.sched.step()
            if self.rho_sched is not None:
                self.rho_sched.step()
            value = float(loss) if loss is not None else math.nan
            if not math.isfinite(value):
                batches.close()
                return step
            loss_sum += value * len(y)
            correct += int((first[0].argmax(1) == y).sum())
            seen += len(y)
            if step % 20 == 0:
                batches.set_postfix(loss=f"{value:.4f}", refresh=False)
        return loss_sum / seen, correct / seen

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float]:
        self.model.eval()
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for x, y in self.test_loader.epoch():
            with autocast(self.cfg.precision, self.device):
                logits = at_least_fp32(self.model(x))
            loss += sum_loss(logits, y, self.cfg.loss)
            correct += (logits.argmax(1) == y).sum()
        n = self.test_loader.num_examples
        return float(loss) / n, int(correct) / n

    def _lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def _diverged(self, epoch: int, step: int, seconds: float) -> None:
        self.status, self.diverged_at = "unstable", (epoch, step)
        self.seconds += seconds
        self._save(epoch - 1)
        self._log_line({"event": "diverged", "epoch": epoch, "step": step})
        if self.cfg.progress:
            where = "the test loss" if step < 0 else f"step {step}"
            tqdm.write(f"epoch {epoch}: non-finite loss at {where}; run marked unstable")

    # -- files ------------------------------------------------------------------------------

    def _log_line(self, record: dict[str, Any]) -> None:
        if self.dir is not None:
            with (self.dir / METRICS).open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _save(self, epoch: int) -> None:
        """Checkpoint after ``epoch`` completed epochs (atomic replace)."""
        if self.dir is None or not self.cfg.checkpoint:
            return
        state = {
            "format": 2,
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "status": self.status,
            "diverged_at": list(self.diverged_at) if self.diverged_at else None,
            "metrics": [asdict(m) for m in self.metrics],
            "seconds": self.seconds,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rho_scheduler": self.rho_sched.state_dict() if self.rho_sched is not None else None,
            "rng": _rng_state(self.device),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        save_checkpoint(state, self.dir / CHECKPOINT)

    def _resume(self) -> int | None:
        """Load the run directory's checkpoint and return its number of completed epochs
        (``None``: no checkpoint, a fresh run)."""
        assert self.dir is not None
        path = self.dir / CHECKPOINT
        if not path.is_file():
            return None
        state = load_checkpoint(path, _CHECKPOINT_KEYS)
        _check_resumable(state["config"], self.cfg, int(state["epoch"]), self.dir)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.rho_sched is not None and state.get("rho_scheduler"):
            self.rho_sched.load_state_dict(state["rho_scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], self.device)
        self.metrics = [EpochMetrics(**m) for m in state["metrics"]]
        self.seconds = float(state["seconds"])
        self.status = state["status"]
        at = state["diverged_at"]
        self.diverged_at = (int(at[0]), int(at[1])) if at else None
        # metrics.jsonl may hold lines written after the checkpoint: rewrite it from the latter
        lines = [json.dumps({"event": "epoch", **asdict(m)}) + "\n" for m in self.metrics]
        if self.diverged_at:
            epoch, step = self.diverged_at
            lines.append(json.dumps({"event": "diverged", "epoch": epoch, "step": step}) + "\n")
        (self.dir / METRICS).write_text("".join(lines))
        return int(state["epoch"])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, done: int, run_dir: Path) -> None:
    old, new = _ADDED_KEYS | _flatten(saved), _flatten(cfg.to_dict())
    keys = (old.keys() | new.keys()) - _RESUME_FREE
    differ = sorted(k for k in keys if old.get(k) != new.get(k))
    if differ:
        raise ResumeError(
            f"{run_dir} holds a checkpoint of another config (differs in {differ}); "
            "use a new run directory or delete that one"
        )
    if saved["epochs"] != cfg.epochs and cfg.schedule.name == "cosine":
        raise ResumeError(
            f"epochs: the cosine schedule of the checkpoint in {run_dir} spans "
            f"{saved['epochs']} epochs; resume with epochs = {saved['epochs']}"
        )
    if saved["epochs"] != cfg.epochs and cfg.sam.schedule != "constant":
        raise ResumeError(
            f"epochs: the ρ schedule {cfg.sam.schedule!r} of the checkpoint in {run_dir} spans "
            f"{saved['epochs']} epochs; resume with epochs = {saved['epochs']}"
        )
    if done > cfg.epochs:
        raise ResumeError(
            f"epochs: the checkpoint in {run_dir} has {done} epochs done, more than {cfg.epochs}"
        )


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
