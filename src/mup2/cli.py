"""The ``mup2`` command. Each subcommand is a thin layer over a library call."""

from __future__ import annotations

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


def main() -> None:
    app()
