"""``smallfit predict``: a saved model or a run's cascade over a whole file."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from smallfit.cli.common import engine_config, engine_options, progress_wanted


@click.command()
@click.argument("model_or_run", type=click.Path(path_type=Path, file_okay=False))
@click.argument("data_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path), help="Predictions (JSONL)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "csv", "parquet"]),
    default="auto",
    show_default=True,
    help="Input format; auto goes by the suffix.",
)
@click.option("--text-field", default="text", show_default=True, help="Field holding the text.")
@click.option(
    "--id-field", default="id", show_default=True, help="Field copied to each row as its id."
)
@click.option("--batch-size", type=int, default=256, show_default=True, help="Rows per batch.")
@click.option("--top-k", type=int, default=3, show_default=True, help="Probabilities per row.")
@engine_options("Ray actors, one model copy each", "Ray actors [one per CPU of the cluster].")
@click.option("--overwrite", is_flag=True, help="Start over instead of continuing the output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def predict(
    model_or_run: Path,
    data_file: Path,
    out: Path,
    fmt: str,
    text_field: str,
    id_field: str,
    batch_size: int,
    top_k: int,
    engine: str,
    workers: int | None,
    ray_address: str | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Answer every row of DATA_FILE (JSONL, CSV or Parquet) with a model directory, or a run
    directory (its cascade, else its selected model), into one JSON line per row: its line and
    id, the label with its confidence and top probabilities (an extractor: the fields and their
    confidences) and the tier that answered.

    Streams in bounded memory. Rerun the same command after a crash or a bad row: it continues
    after the last row written and never writes a row twice."""
    from smallfit.errors import SmallfitError
    from smallfit.predict import load_answerer, predict_file

    if top_k < 1:
        raise SmallfitError(f"--top-k must be at least 1, not {top_k}")
    engine_config(engine, workers, ray_address)  # checked before the model loads
    answerer = load_answerer(model_or_run, top_k=top_k)
    click.echo(f"predicting with {answerer.path} ({engine})", err=True)
    with contextlib.ExitStack() as stack:
        spread = None
        if engine == "ray":
            from smallfit.predict.ray_engine import ray_engine

            spread = stack.enter_context(
                ray_engine(answerer.path, top_k=top_k, workers=workers, address=ray_address)
            )
        summary = predict_file(
            answerer,
            data_file,
            out,
            format=fmt,
            text_field=text_field,
            id_field=id_field,
            batch_size=batch_size,
            overwrite=overwrite,
            progress=progress_wanted(quiet),
            engine=spread,
        )
    click.echo(summary.line())
