"""What the command modules share."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from smallfit.engine.config import EngineConfig

F = TypeVar("F", bound=Callable[..., Any])


EXIT_BUDGET = 3
"""Exit code of a run the budget stopped (what was done is written)."""


def progress_wanted(quiet: bool) -> bool:
    """Progress bars: on a terminal unless ``--quiet``, or wherever SMALLFIT_PROGRESS=1."""
    return (not quiet and sys.stderr.isatty()) or os.environ.get("SMALLFIT_PROGRESS") == "1"


def engine_options(
    help_ray: str, help_workers: str, *, workers_flag: str = "--workers"
) -> Callable[[F], F]:
    """``--engine local|ray``, ``--workers`` (or ``workers_flag``) and ``--ray-address``, as
    the commands that spread their work over Ray take them (``help_ray``: what ``ray`` does for
    this command)."""

    def decorate(command: F) -> F:
        command = click.option(
            "--ray-address", help="A running Ray cluster (e.g. 10.0.0.5:6379) [start one here]."
        )(command)
        command = click.option(workers_flag, "workers", type=int, help=help_workers)(command)
        return click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help=f"local: this process; ray: {help_ray}.",
        )(command)

    return decorate


def engine_config(engine: str, workers: int | None, ray_address: str | None) -> EngineConfig:
    """The options of :func:`engine_options` as an engine config, checked."""
    from smallfit.engine.config import EngineConfig
    from smallfit.errors import SmallfitError

    if workers is not None and workers < 1:
        raise SmallfitError(f"--workers must be at least 1, not {workers}")
    if engine == "local" and (workers is not None or ray_address is not None):
        raise SmallfitError("--workers, --replicas and --ray-address go with --engine ray")
    return EngineConfig.model_validate({"kind": engine, "workers": workers, "address": ray_address})
