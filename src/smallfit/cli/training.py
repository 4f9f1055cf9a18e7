"""``smallfit distill``: a fit's chain up to the trained students, the part ``accelerate launch``
spreads over processes."""

from __future__ import annotations

from pathlib import Path

import click

from smallfit.cli.common import progress_wanted


def _log(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="YAML fit config (see docs/config.md).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def distill(config_path: Path, quiet: bool) -> None:
    """Run a fit's chain up to the trained students (data, teacher, labels, students) and stop.

    Under `accelerate launch` (or torchrun) the transformer and decoder students, and a
    fine-tuned teacher, train on every process with transformers' Trainer; the first process
    writes. `smallfit fit` with the same config then reuses all of it."""
    from smallfit.config import load_fit_config
    from smallfit.pipeline import distill as run_distill
    from smallfit.train.distributed import is_main

    config = load_fit_config(config_path)
    ran = run_distill(config, progress=progress_wanted(quiet) and is_main(), log=_log)
    if is_main():
        click.echo(f"stages run: {', '.join(ran) or 'none (all reused)'}")
        click.echo(f"next: smallfit fit --config {config_path}")
