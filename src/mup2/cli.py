"""The ``mup2`` command. Each subcommand is a thin layer over a library call.

Every failure a user can cause ends in one place, :meth:`_Group.invoke`: a
:class:`~mup2.errors.UserError` (a bad config, option, file or store), a failed file operation
or a bad option prints ``error: ...`` in a line or two naming the input and the fix, and exits
with code 2; options are checked before anything is written. ``mup2 --debug CMD`` shows the
traceback instead. Exit codes: 0 done, 1 a sweep that did not finish (failed runs), 2 bad
input, 3 a worker that stopped with runs left, 130 interrupted (see docs/errors.md).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from mup2.coordcheck.depth import DEPTH_MODELS
from mup2.errors import USER_ERROR, UserError, describe_os_error
from mup2.optim.families import adam_like
from mup2.optim.rules import LIGHTSAM_RULES, ONEPASS_RULES, RULES, SCALINGS, get_rule
from mup2.parametrization.schemes import SCHEMES

if TYPE_CHECKING:
    from mup2.sweep.config import SweepConfig

__all__ = ["app", "main"]

#: Exit codes besides 0 and :data:`mup2.errors.USER_ERROR`.
UNFINISHED, STOPPED_EARLY, INTERRUPTED = 1, 3, 130


class _Group(TyperGroup):
    """The root command: maps user errors to a short message and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:  # a bad option or argument (click's UsageError)
            if ctx.params.get("debug"):
                raise
            sub = getattr(exc, "ctx", None)
            command = f"mup2 {sub.info_name}" if sub is not None and sub.parent else "mup2"
            message = exc.format_message().replace("Value error, ", "")
            _fail(f"{message}\n(see `{command} --help`)")
        except (UserError, OSError) as exc:
            if ctx.params.get("debug"):
                raise
            _fail(describe_os_error(exc) if isinstance(exc, OSError) else str(exc))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USER_ERROR)


app = typer.Typer(
    name="mup2",
    cls=_Group,
    help="Sharpness-aware training whose (lr, rho) transfer across width: muP, muP^2, SAM family.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the traceback of an error instead of a message")
    ] = False,
) -> None:
    """mup2: muP, muP^2 perturbation scaling and the SAM family."""


def _number(low: float | None = None, high: float | None = None, *, above: bool = False) -> Any:
    """A parser of finite floats in a range (typer's own float options let nan and inf in)."""

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a number") from None
        if not math.isfinite(x):
            raise typer.BadParameter(f"{value!r} is not a finite number")
        if low is not None and (x < low or (above and x == low)):
            raise typer.BadParameter(f"{value} must be {'>' if above else '>='} {low}")
        if high is not None and x > high:
            raise typer.BadParameter(f"{value} must be <= {high}")
        return x

    return parse


def _choice(*names: str) -> Any:
    """A parser that accepts one of ``names``."""

    def parse(value: str) -> str:
        if value not in names:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(names)}")
        return value

    return parse


_POSITIVE, _NONNEGATIVE, _FRACTION = _number(0.0, above=True), _number(0.0), _number(0.0, 1.0)
_NUMBER = _number()


def _batch(value: str) -> str:
    """A ``--batch``: ``auto`` or a whole number >= 1 (:func:`mup2.sweep.config.parse_batch`)."""
    from mup2.sweep.config import parse_batch

    try:
        return str(parse_batch(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


#: The ``--batch`` option of ``mup2 sweep`` and ``mup2 worker``.
_BatchOption = Annotated[
    str | None,
    typer.Option(
        parser=_batch,
        metavar="N|auto",
        help="grid points each worker trains at once as one stacked model (1: one at a time; "
        "auto: as many as fit on the device); default: the sweep config's batch",
    ),
]


def _writable(path: Path, option: str, *, directory: bool) -> None:
    """Raise :class:`UserError` unless ``path`` can be written (as a directory or a file),
    before anything else is; creates nothing."""
    target = path.absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = None
    if probe == target and directory and not target.is_dir():
        problem = "is a file, not a directory"
    elif probe == target and not directory and target.is_dir():
        problem = "is a directory, not a file"
    elif probe != target and not probe.is_dir():
        problem = f"cannot be made: {probe} is a file"
    elif not os.access(probe if probe.is_dir() else probe.parent, os.W_OK | os.X_OK):
        problem = f"cannot be written: {probe} is not writable"
    if problem:
        raise UserError(f"{option} {path} {problem}; choose another {option}")


@app.command()
def roles(
    width: Annotated[int, typer.Option(min=1, help="width of the model to report")] = 512,
    base_width: Annotated[
        int, typer.Option(min=1, help="base width (where hyperparameters are tuned)")
    ] = 64,
    depth: Annotated[int, typer.Option(min=2, help="number of Linear layers")] = 3,
    norm: Annotated[str, typer.Option(parser=_choice("none", "layer", "batch"))] = "none",
    scheme: Annotated[str, typer.Option(parser=_choice(*SCHEMES), help="the scheme")] = "mup-sgd",
    rule: Annotated[str, typer.Option(parser=_choice(*RULES), help="the SAM rule")] = "sam",
    scaling: Annotated[
        str, typer.Option(parser=_choice(*SCALINGS), help="the perturbation scaling")
    ] = "mup2",
    markdown: Annotated[bool, typer.Option(help="print a markdown table")] = False,
) -> None:
    """Print the role report of the built-in MLP: roles, fan and init/LR/rho multipliers."""
    from mup2.models import MLP
    from mup2.parametrization.parametrize import Parametrization

    model = MLP(width, depth=depth, norm=norm)  # type: ignore[arg-type]
    base = MLP(base_width, depth=depth, norm=norm)  # type: ignore[arg-type]
    p = Parametrization.infer(model, base, scheme)
    try:
        typer.echo(p.report(rule, scaling, markdown=markdown))
    except ValueError as exc:  # a rule and scaling that do not go together
        raise UserError(f"--rule {rule} --scaling {scaling}: {exc}") from None


@app.command()
def coordcheck(
    model: Annotated[
        str,
        typer.Option(
            parser=_choice("mlp", *DEPTH_MODELS),
            help="model family: mlp across widths; resmlp, vit or vit-mean (the ViT read by the"
            " mean of its patch tokens) across --depths",
        ),
    ] = "mlp",
    widths: Annotated[
        str, typer.Option(help="comma-separated increasing widths, at least 3")
    ] = "64,128,256,512,1024",
    depth: Annotated[int, typer.Option(min=2, help="number of Linear layers")] = 3,
    in_features: Annotated[
        int, typer.Option(min=1, help="input dimension of the fixed batch")
    ] = 32,
    norm: Annotated[
        str | None,
        typer.Option(
            parser=_choice("none", "layer", "batch"),
            help="none, layer or batch (default: layer with sam-on or --table, else none)",
        ),
    ] = None,
    scheme: Annotated[
        str, typer.Option(parser=_choice("sp", "mup"), help="sp or mup (μP for SGD)")
    ] = "mup",
    rule: Annotated[
        list[str] | None,
        typer.Option(
            parser=_choice(*RULES, *LIGHTSAM_RULES, *ONEPASS_RULES),
            help="the rule; repeatable (default: sam; with --table, the rules of Table 1 and "
            "LightSAM's)",
        ),
    ] = None,
    scaling: Annotated[
        list[str] | None,
        typer.Option(
            parser=_choice(*SCALINGS),
            help="naive, global, mup2 or mup2-coupled; repeatable (default: the first three)",
        ),
    ] = None,
    rho: Annotated[float, typer.Option(parser=_NONNEGATIVE, help="perturbation radius")] = 0.1,
    lr: Annotated[float, typer.Option(parser=_POSITIVE, help="base SGD learning rate")] = 0.1,
    adaptive_lr: Annotated[
        float,
        typer.Option(
            parser=_POSITIVE, help="learning rate of LightSAM's AdaGrad and Adam variants"
        ),
    ] = 1e-3,
    eta: Annotated[float, typer.Option(parser=_NONNEGATIVE, help="ASAM offset")] = 0.01,
    optimizer: Annotated[
        str,
        typer.Option(
            parser=_choice("sgd", "adamw"),
            help="base optimizer of the SAM and one-pass rules: sgd (lr) or adamw "
            "(--adaptive-lr, and μP for Adam)",
        ),
    ] = "sgd",
    momentum: Annotated[
        float | None,
        typer.Option(
            parser=_FRACTION, help="SGD momentum (default: 0.9 for msam, which needs it, else 0)"
        ),
    ] = None,
    steps: Annotated[
        int, typer.Option(min=1, help="SAM steps; slopes are reported at the last")
    ] = 3,
    seeds: Annotated[int, typer.Option(min=1, help="average over seeds 0..N-1")] = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="size of the fixed batch")] = 32,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="write every slope as JSON records")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="write log-log plots (PNG)")] = None,
    table: Annotated[
        bool, typer.Option("--table", help="print Table 1 for every rule (markdown)")
    ] = False,
    depths: Annotated[
        str | None,
        typer.Option(
            help="comma-separated increasing depths: sweep depth at --width (resmlp, vit), "
            "width-only against depth-aware μP² (docs/math.md §9)"
        ),
    ] = None,
    width: Annotated[
        int | None, typer.Option(min=1, help="fixed width of --depths [resmlp 128, vit 64]")
    ] = None,
    base_depth: Annotated[
        int | None, typer.Option(min=1, help="base depth of --depths [the smallest]")
    ] = None,
    alpha: Annotated[
        float, typer.Option(parser=_POSITIVE, help="branch exponent of --depths (1: CompleteP)")
    ] = 1.0,
) -> None:
    """Coordinate check: per-layer slopes of activation, update and perturbation RMS vs width
    (or vs depth with --depths)."""
    import json
    from functools import partial

    import torch

    from mup2.coordcheck import (
        TABLE1_RULES,
        TABLE1_SCALINGS,
        format_slopes,
        format_table1,
        plot_coord_checks,
        records,
        table1,
    )
    from mup2.models.mlp import MLP

    for path, option in ((json_path, "--json"), (plot, "--plot")):
        if path is not None:
            _writable(path, option, directory=False)
    if depths is not None or model != "mlp":
        if depths is None or model == "mlp":
            raise UserError(
                f"--depths sweeps --model {', '.join(DEPTH_MODELS)}; the width check runs mlp"
            )
        if rule is not None and len(rule) > 1:
            raise UserError("--depths runs one --rule")
        one = (rule or ["sam"])[0]
        _coordcheck_depths(
            model, depths, width, base_depth, alpha, one, rho, eta, steps, seeds, batch_size,
            in_features, json_path, plot, _check_kwargs(one, optimizer, scheme, lr, adaptive_lr,
                                                        momentum),
        )  # fmt: skip
        return
    try:
        ws = [int(w) for w in widths.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--widths must be comma-separated integers, got {widths!r}") from None
    scalings = list(scaling or TABLE1_SCALINGS)
    rules = list(rule or ([*TABLE1_RULES, *LIGHTSAM_RULES] if table else ["sam"]))
    norm_only = [r for r in rules if get_rule(r).norm_only]
    norm_ = norm or ("layer" if norm_only else "none")
    if norm_only and norm_ == "none":
        raise UserError(
            f"rule {norm_only[0]!r} perturbs only normalization layers: use --norm layer"
        )

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_features, generator=gen)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    factory = partial(MLP, depth=depth, in_features=in_features, norm=norm_)  # type: ignore[arg-type]
    sets: list[tuple[list[str], dict[str, Any]]] = []  # rules that share their keywords
    for r in rules:
        kw = _check_kwargs(r, optimizer, scheme, lr, adaptive_lr, momentum)
        same = [rs for rs, k in sets if k == kw]
        if same:
            same[0].append(r)
        else:
            sets.append(([r], kw))
    try:
        results = [
            res
            for rule_set, kw in sets
            if rule_set
            for res in table1(
                factory,
                ws,
                x,
                y,
                rules=rule_set,
                scalings=scalings,
                rho=rho,
                eta=eta,
                steps=steps,
                seeds=range(seeds),
                **kw,
            )
        ]
    except ValueError as exc:  # the check's own validation: widths, rule and scaling
        raise UserError(str(exc)) from None
    results.sort(key=lambda res: rules.index(res.rule))  # in the order asked (stable: scalings)
    if table:
        typer.echo(
            f"Effectively perturbed layer groups (slope of log2 effective-perturbation RMS vs "
            f"log2 width > -0.25) of a {depth}-layer ReLU MLP, norm={norm_}, scheme {scheme}, "
            f"{'AdamW lr=' + str(adaptive_lr) if optimizer == 'adamw' else f'SGD lr={lr}'}, "
            f"rho={rho}, widths {ws}, seeds 0..{seeds - 1}, step {steps} of "
            f"{steps}.\n"
        )
        typer.echo(format_table1(results))
    else:
        typer.echo(format_slopes(results))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            json_path.write_text(json.dumps(records(results), indent=1) + "\n")
        except OSError as exc:  # a full disk: name the file
            raise OSError(exc.errno, exc.strerror, str(json_path)) from None
        typer.echo(f"wrote {json_path}")
    if plot is not None:
        for r in rules:
            out = plot if len(rules) == 1 else plot.with_name(f"{plot.stem}-{r}{plot.suffix}")
            plot_coord_checks([res for res in results if res.rule == r], out)
            typer.echo(f"wrote {out}")


def _check_kwargs(
    rule: str,
    optimizer: str,
    scheme: str,
    lr: float,
    adaptive_lr: float,
    momentum: float | None,
) -> dict[str, Any]:
    """The coordinate check's keywords for ``rule``: base optimizer, learning rate and scheme.
    LightSAM's Adam-like rules take ``adaptive_lr`` whatever ``optimizer`` is; ``adamw`` puts
    SAM's and the one-pass rules around AdamW in μP for Adam; MSAM needs SGD's momentum (0.9
    unless ``momentum`` is given)."""
    import torch

    r = get_rule(rule)
    if adam_like(rule):
        return {"lr": adaptive_lr, "scheme": scheme}
    if optimizer == "adamw" and r.lightsam is None:
        adam = "mup-adam" if scheme == "mup" else scheme
        return {"lr": adaptive_lr, "scheme": adam, "base_optimizer": torch.optim.AdamW}
    mom = 0.9 if momentum is None and r.reads_momentum else momentum
    return {"lr": lr, "scheme": scheme, **({"base_kwargs": {"momentum": mom}} if mom else {})}


def _coordcheck_depths(
    model: str,
    depths: str,
    width: int | None,
    base_depth: int | None,
    alpha: float,
    rule: str,
    rho: float,
    eta: float,
    steps: int,
    seeds: int,
    batch_size: int,
    in_features: int,
    json_path: Path | None,
    plot: Path | None,
    kwargs: dict[str, Any],
) -> None:
    """``mup2 coordcheck --depths``: width-only and depth-aware μP² at a fixed width;
    ``kwargs``: the base optimizer's (:func:`_check_kwargs`)."""
    import json

    import torch

    from mup2.coordcheck.depth import (
        depth_checks,
        depth_records,
        format_depth_summary,
        plot_depth_checks,
    )

    try:
        ds = [int(d) for d in depths.split(",") if d.strip()]
    except ValueError:
        raise UserError(f"--depths must be comma-separated integers, got {depths!r}") from None
    if len(ds) < 3:
        raise UserError(f"--depths needs at least 3 depths to fit a slope, got {ds}; e.g. 2,4,8,16")
    w = width or (128 if model == "resmlp" else 64)
    base = kwargs.get("base_optimizer", torch.optim.SGD).__name__
    scheme = "mup-sgd" if kwargs["scheme"] == "mup" else kwargs["scheme"]
    settings = [("width-only μP²", None, "mup2"), (f"depth-aware μP² (α={alpha:g})", alpha, "mup2")]
    try:
        results = depth_checks(
            model, ds, width=w, settings=settings, base_depth=base_depth, rule=rule, rho=rho,
            eta=eta, steps=steps, seeds=range(seeds), in_features=in_features,
            batch_size=batch_size, **kwargs,
        )  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc)) from None
    typer.echo(
        f"{model} at width {w}, depths {ds} (base {base_depth or ds[0]}), rule {rule}, "
        f"rho={rho}, {base} lr={kwargs['lr']} (scheme {scheme}), seeds 0..{seeds - 1}, step "
        f"{steps} of "
        f"{steps}; slope of log2 RMS vs log2 depth; 'rel.': minus the layer's activation slope "
        "(removes a branch output's multiplier); P.#: mean over the blocks\n"
    )
    typer.echo(format_depth_summary(results, markdown=False))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(depth_records(results), indent=1) + "\n")
        typer.echo(f"wrote {json_path}")
    if plot is not None:
        plot_depth_checks(results, plot)
        typer.echo(f"wrote {plot}")


@app.command()
def train(
    config: Annotated[str, typer.Argument(help="run config: a .toml, .yaml or .yml file")],
    run_dir: Annotated[
        str | None,
        typer.Option(
            help="directory for config.json, metrics.jsonl, checkpoint.pt and result.json; "
            "a directory with a checkpoint resumes (default: runs/ and the config file's stem)"
        ),
    ] = None,
) -> None:
    """Train one run from CONFIG (see docs/training.md); resume it if RUN_DIR has a checkpoint."""
    import json

    from mup2.config import load_config
    from mup2.train import train as train_run

    cfg = load_config(config)
    out = Path(run_dir) if run_dir is not None else Path("runs") / Path(config).stem
    _writable(out, "--run-dir", directory=True)
    result = train_run(cfg, out)
    summary = {k: v for k, v in result.to_dict().items() if k != "metrics"}
    typer.echo(json.dumps({"run_dir": str(out), **summary}))


@app.command()
def report(
    storage: Annotated[
        str, typer.Option(help="the sweep's Optuna storage: sqlite:///path.db or a PostgreSQL URL")
    ],
    study: Annotated[str, typer.Option(help="the sweep's study name")],
    out: Annotated[
        Path | None, typer.Option(help="output directory (default: reports/ and the study name)")
    ] = None,
    unstable_below: Annotated[
        float | None,
        typer.Option(
            parser=_NUMBER,
            help="runs of a maximized metric below this count as unstable "
            "(default: 0.30 for the built-in test accuracy, none for other metrics)",
        ),
    ] = None,
    unstable_above: Annotated[
        float | None,
        typer.Option(
            parser=_NUMBER,
            help="runs of a minimized metric (a loss) above this count as unstable "
            "(default: none, only diverged runs)",
        ),
    ] = None,
    curves: Annotated[
        bool | None,
        typer.Option(
            "--curves/--no-curves",
            help="draw curves.png, the metric over steps at each width's optimum "
            "(default: for sweeps of a user's function)",
        ),
    ] = None,
) -> None:
    """Figure 1 (the sweep's metric over (lr, rho) per width), the rho slice, the optima against
    width, summary.md, trials.csv and optima.csv from a sweep's storage, for the metric and
    direction the sweep declared (see docs/report.md)."""
    from mup2.report import make_report

    out_dir = out if out is not None else Path("reports") / study
    _writable(out_dir, "--out", directory=True)
    files = make_report(
        storage,
        study,
        out_dir,
        unstable_below=unstable_below,
        unstable_above=unstable_above,
        curves=curves,
    )
    for p, t in files.analysis.transfers.items():
        typer.echo(f"{p}: transfer {t.verdict} ({t.reason})")
    for path in files.paths:
        typer.echo(f"wrote {path}")


@app.command()
def sweep(
    config: Annotated[str, typer.Argument(help="sweep config: a .toml, .yaml or .yml file")],
    run_dir: Annotated[
        str | None,
        typer.Option(
            help="directory for the SQLite store and the report, made if missing (default: "
            "runs/NAME)"
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="local worker processes (default: the config's)")
    ] = None,
    batch: _BatchOption = None,
    report_: Annotated[
        bool, typer.Option("--report/--no-report", help="write the report when done")
    ] = True,
    progress: Annotated[
        bool,
        typer.Option(
            help="a progress bar in a terminal, a status line a minute in a log "
            "(--no-progress: each worker logs a line per trial)"
        ),
    ] = True,
    mkdir: Annotated[
        bool,
        typer.Option(
            "--mkdir",
            help="make the directory of the config's storage (an SQLite file) if it is missing; "
            "without it a missing one is an error (a mistyped path would start over)",
        ),
    ] = False,
) -> None:
    """Run (or resume) a (width x lr x rho x seed x parametrization) sweep of mup2's training or
    of your own function (a `train.objective` entry point); see docs/sweeps.md. Its first line
    says what it found: `new store at PATH` or `resuming: N of M runs finished in PATH`. Exits
    with 0 when every run finished, 1 when some failed (run it again to retry them)."""
    from mup2.sweep import load_sweep_config, run_sweep

    cfg = load_sweep_config(config)
    out = Path(run_dir) if run_dir is not None else Path("runs") / cfg.name
    _writable(out, "--run-dir", directory=True)
    try:
        storage, state = run_sweep(
            cfg,
            out,
            workers=workers,
            batch=_batch_size(batch),
            progress=progress,
            mkdir=mkdir,
            say=typer.echo,
        )
    except RuntimeError as exc:  # every worker crashed
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(UNFINISHED) from None
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: run the same command again to resume", err=True)
        raise typer.Exit(INTERRUPTED) from None
    typer.echo(
        f"sweep {cfg.name}: {state.complete}/{state.total} runs finished "
        f"({state.unstable} unstable, {state.failed} failed); store: {storage}"
    )
    if report_ and state.complete:
        _write_report(cfg, storage, out / "report")
    if not state.finished:
        typer.echo(
            f"error: {state.total - state.complete} runs did not finish (their trials' 'error' "
            "attribute says why); run the same command again to retry them",
            err=True,
        )
        raise typer.Exit(UNFINISHED)


def _write_report(cfg: SweepConfig, storage: str, out: Path) -> None:
    """The sweep's report in ``out``; for a user objective's sweep, a line saying why not when
    the report cannot be made of its metric."""
    from mup2.report import make_report

    if cfg.user is None:
        files = make_report(storage, cfg.name, out, cfg.unstable_below)
    else:
        try:  # its metric's own threshold: unstable_below is for mup2's accuracy
            files = make_report(storage, cfg.name, out)
        except Exception as exc:  # the run is done and stored: the report is a bonus here
            typer.echo(f"report: skipped ({type(exc).__name__}: {exc})")
            return
    typer.echo(f"report: {files.summary.parent}")


def _batch_size(option: str | None) -> int | Literal["auto"] | None:
    """A parsed ``--batch`` as :func:`mup2.sweep.run_worker` takes it."""
    return None if option is None else "auto" if option == "auto" else int(option)


@app.command()
def worker(
    storage: Annotated[str, typer.Option(help="the sweep's Optuna storage URL")],
    study: Annotated[str, typer.Option(help="the sweep's name")],
    threads: Annotated[int, typer.Option(min=1, help="torch threads of this worker")] = 1,
    batch: _BatchOption = None,
    max_trials: Annotated[int | None, typer.Option(min=1, help="stop after this many runs")] = None,
) -> None:
    """Join a sweep from any machine that reaches its storage; runs until no run is waiting or
    running. A sweep of your own function imports its entry point here first (a relative file:
    from the sweep config's folder, else from the current directory). Exits with 0 when the
    sweep finished, 1 when runs failed, 3 when runs are left."""
    from mup2.sweep import open_sweep, run_worker, stop_on_signals, sweep_state

    try:
        with stop_on_signals():
            ran = run_worker(
                storage,
                study,
                threads=threads,
                batch=_batch_size(batch),
                max_trials=max_trials,
                say=lambda line: typer.echo(f"worker: {line}"),
            )
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: its run is queued again", err=True)
        raise typer.Exit(INTERRUPTED) from None
    found, _, points = open_sweep(storage, study)
    state = sweep_state(found, points)
    typer.echo(
        f"worker: ran {ran} trials; sweep {study}: {state.complete}/{state.total} runs "
        f"finished ({state.failed} failed, {state.running + state.waiting} left)"
    )
    if not state.finished:
        raise typer.Exit(UNFINISHED if state.done else STOPPED_EARLY)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/demo"),
    workers: Annotated[int | None, typer.Option(min=1, help="local workers (default 2)")] = None,
) -> None:
    """The main job: a coordinate check, then a small Fashion-MNIST (lr, rho) sweep at three
    widths (μP² against μP-global) and its report. Resumes if interrupted."""
    from mup2.demo import run_demo

    _writable(out, "--out", directory=True)
    try:
        run_demo(out, workers=workers, say=typer.echo)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: run `mup2 demo` again to resume", err=True)
        raise typer.Exit(INTERRUPTED) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
