"""The ``mup2`` command. Each subcommand is a thin layer over a library call."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="mup2",
    help="Sharpness-aware training whose (lr, rho) transfer across width: muP, muP^2, SAM family.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """mup2: muP, muP^2 perturbation scaling and the SAM family."""


@app.command()
def roles(
    width: Annotated[int, typer.Option(help="width of the model to report")] = 512,
    base_width: Annotated[
        int, typer.Option(help="base width (where hyperparameters are tuned)")
    ] = 64,
    depth: Annotated[int, typer.Option(help="number of Linear layers")] = 3,
    norm: Annotated[str, typer.Option(help="none, layer or batch")] = "none",
    scheme: Annotated[str, typer.Option(help="sp, mup-sgd or mup-adam")] = "mup-sgd",
    rule: Annotated[str, typer.Option(help="sam, asam, asam-layerwise or sam-on")] = "sam",
    scaling: Annotated[str, typer.Option(help="naive, global, mup2 or mup2-coupled")] = "mup2",
    markdown: Annotated[bool, typer.Option(help="print a markdown table")] = False,
) -> None:
    """Print the role report of the built-in MLP: roles, fan and init/LR/rho multipliers."""
    from mup2.models import MLP
    from mup2.parametrize import Parametrization

    model = MLP(width, depth=depth, norm=norm)  # type: ignore[arg-type]
    base = MLP(base_width, depth=depth, norm=norm)  # type: ignore[arg-type]
    p = Parametrization.infer(model, base, scheme)
    typer.echo(p.report(rule, scaling, markdown=markdown))


@app.command()
def coordcheck(
    model: Annotated[str, typer.Option(help="model family (only 'mlp')")] = "mlp",
    widths: Annotated[
        str, typer.Option(help="comma-separated increasing widths, at least 3")
    ] = "64,128,256,512,1024",
    depth: Annotated[int, typer.Option(help="number of Linear layers")] = 3,
    in_features: Annotated[int, typer.Option(help="input dimension of the fixed batch")] = 32,
    norm: Annotated[
        str | None,
        typer.Option(
            help="none, layer or batch (default: layer with sam-on or --table, else none)"
        ),
    ] = None,
    scheme: Annotated[str, typer.Option(help="sp or mup (μP for SGD)")] = "mup",
    rule: Annotated[
        str,
        typer.Option(
            help="sam, asam, asam-layerwise, sam-on, lightsam-adagrad-norm, lightsam-adagrad "
            "or lightsam-adam"
        ),
    ] = "sam",
    scaling: Annotated[
        list[str] | None,
        typer.Option(
            help="naive, global, mup2 or mup2-coupled; repeatable (default: the first three)"
        ),
    ] = None,
    rho: Annotated[float, typer.Option(help="perturbation radius")] = 0.1,
    lr: Annotated[float, typer.Option(help="base SGD learning rate")] = 0.1,
    adaptive_lr: Annotated[
        float, typer.Option(help="learning rate of LightSAM's AdaGrad and Adam variants")
    ] = 1e-3,
    eta: Annotated[float, typer.Option(help="ASAM offset")] = 0.01,
    steps: Annotated[int, typer.Option(help="SAM steps; slopes are reported at the last")] = 3,
    seeds: Annotated[int, typer.Option(help="average over seeds 0..N-1")] = 3,
    batch_size: Annotated[int, typer.Option(help="size of the fixed batch")] = 32,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="write every slope as JSON records")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="write log-log plots (PNG)")] = None,
    table: Annotated[
        bool, typer.Option("--table", help="print Table 1 for every rule (markdown)")
    ] = False,
) -> None:
    """Coordinate check: per-layer slopes of activation, update and perturbation RMS vs width."""
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
    from mup2.schemes import LIGHTSAM_RULES

    try:
        if model != "mlp":
            raise ValueError(f"unknown model {model!r}; the coordinate check knows 'mlp'")
        if scheme not in ("sp", "mup"):
            raise ValueError(f"--scheme must be 'sp' or 'mup', not {scheme!r}")
        try:
            ws = [int(w) for w in widths.split(",") if w.strip()]
        except ValueError:
            raise ValueError(f"--widths must be comma-separated integers, got {widths!r}") from None
        scalings = list(scaling or TABLE1_SCALINGS)
        rules = [*TABLE1_RULES, *LIGHTSAM_RULES] if table else [rule]
        norm_ = norm or ("layer" if table or rule == "sam-on" else "none")
        if norm_ not in ("none", "layer", "batch"):
            raise ValueError(f"--norm must be none, layer or batch, not {norm_!r}")
        if "sam-on" in rules and norm_ == "none":
            raise ValueError("rule 'sam-on' perturbs only normalization layers: use --norm layer")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, in_features, generator=gen)
        y = torch.randint(0, 10, (batch_size,), generator=gen)
        factory = partial(MLP, depth=depth, in_features=in_features, norm=norm_)  # type: ignore[arg-type]
        adam_like = ("lightsam-adagrad", "lightsam-adam")
        results = [
            res
            for rule_set, rate in (
                ([r for r in rules if r not in adam_like], lr),
                ([r for r in rules if r in adam_like], adaptive_lr),
            )
            if rule_set
            for res in table1(
                factory,
                ws,
                x,
                y,
                rules=rule_set,
                scalings=scalings,
                scheme=scheme,
                rho=rho,
                lr=rate,
                eta=eta,
                steps=steps,
                seeds=range(seeds),
            )
        ]
    except ValueError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(2) from None
    if table:
        typer.echo(
            f"Effectively perturbed layer groups (slope of log2 effective-perturbation RMS vs "
            f"log2 width > -0.25) of a {depth}-layer ReLU MLP, norm={norm_}, scheme {scheme}, "
            f"SGD lr={lr}, rho={rho}, widths {ws}, seeds 0..{seeds - 1}, step {steps} of "
            f"{steps}.\n"
        )
        typer.echo(format_table1(results))
    else:
        typer.echo(format_slopes(results))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(records(results), indent=1) + "\n")
        typer.echo(f"wrote {json_path}")
    if plot is not None:
        for r in rules:
            out = plot if len(rules) == 1 else plot.with_name(f"{plot.stem}-{r}{plot.suffix}")
            plot_coord_checks([res for res in results if res.rule == r], out)
            typer.echo(f"wrote {out}")


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
    from pathlib import Path

    from mup2.config import ConfigError, load_config
    from mup2.train import ResumeError
    from mup2.train import train as train_run

    try:
        cfg = load_config(config)
    except (ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    out = Path(run_dir) if run_dir is not None else Path("runs") / Path(config).stem
    try:
        result = train_run(cfg, out)
    except (FileNotFoundError, ResumeError) as exc:  # missing data, a mismatched checkpoint
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
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
        float, typer.Option(help="runs below this test accuracy count as unstable")
    ] = 0.30,
) -> None:
    """Figure 1 (accuracy over (lr, rho) per width), the rho slice, the optima against width,
    summary.md and trials.csv from a sweep's storage (see docs/report.md)."""
    from mup2.report import ReportError, make_report

    out_dir = out if out is not None else Path("reports") / study
    try:
        files = make_report(storage, study, out_dir, unstable_below=unstable_below)
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for p, t in files.analysis.transfers.items():
        typer.echo(f"{p}: transfer {t.verdict} ({t.reason})")
    for path in files.paths:
        typer.echo(f"wrote {path}")


@app.command()
def sweep(
    config: Annotated[str, typer.Argument(help="sweep config: a .toml, .yaml or .yml file")],
    run_dir: Annotated[
        str | None,
        typer.Option(help="directory for the SQLite store and the report (default: runs/NAME)"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="local worker processes (default: the config's)")
    ] = None,
    report_: Annotated[
        bool, typer.Option("--report/--no-report", help="write the report when done")
    ] = True,
) -> None:
    """Run (or resume) a (width x lr x rho x seed x parametrization) sweep; see docs/sweeps.md."""
    from mup2.config import ConfigError
    from mup2.sweep import load_sweep_config, run_sweep

    try:
        cfg = load_sweep_config(config)
        out = Path(run_dir) if run_dir is not None else Path("runs") / cfg.name
        storage, state = run_sweep(cfg, out, workers=workers)
    except (ConfigError, OSError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"sweep {cfg.name}: {state.complete}/{state.total} runs finished "
        f"({state.unstable} unstable, {state.failed} failed); store: {storage}"
    )
    if report_ and state.complete:
        from mup2.report import make_report

        files = make_report(storage, cfg.name, out / "report", cfg.unstable_below)
        typer.echo(f"report: {files.summary.parent}")


@app.command()
def worker(
    storage: Annotated[str, typer.Option(help="the sweep's Optuna storage URL")],
    study: Annotated[str, typer.Option(help="the sweep's name")],
    threads: Annotated[int, typer.Option(help="torch threads of this worker")] = 1,
    max_trials: Annotated[int | None, typer.Option(help="stop after this many runs")] = None,
) -> None:
    """Join a running sweep from any machine that reaches its storage; runs until none is left."""
    from mup2.sweep import run_worker

    try:
        ran = run_worker(storage, study, threads=threads, max_trials=max_trials)
    except KeyError:
        typer.echo(f"error: study {study!r} in {storage} is not a mup2 sweep", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"worker: ran {ran} trials")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/demo"),
    workers: Annotated[int | None, typer.Option(help="local workers (default 2)")] = None,
) -> None:
    """The main job: a coordinate check, then a small Fashion-MNIST (lr, rho) sweep at three
    widths (μP² against SP-naive and μP-global) and its report. Resumes if interrupted."""
    from mup2.demo import run_demo

    try:
        run_demo(out, workers=workers, say=typer.echo)
    except FileNotFoundError as exc:  # Fashion-MNIST is missing: the message says how to get it
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: run `mup2 demo` again to resume", err=True)
        raise typer.Exit(130) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
