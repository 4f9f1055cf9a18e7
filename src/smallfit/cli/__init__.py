"""The ``smallfit`` command line: parse, call the library, print. Nothing heavy at import time
(``smallfit --help`` must not import torch)."""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

import click

from smallfit.cli.batch import predict
from smallfit.cli.common import progress_wanted
from smallfit.cli.labelling import label
from smallfit.cli.traffic import capture, serve, task
from smallfit.cli.training import distill
from smallfit.compress.steps import cli_help

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """Turns user errors into one clear message and exit code 2 (``--debug`` shows tracebacks)."""

    def invoke(self, ctx: click.Context) -> Any:
        from smallfit.errors import SmallfitError

        try:
            return super().invoke(ctx)
        except SmallfitError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: finished stages are kept; rerun to resume.", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    help="Show full tracebacks for errors, and libraries' output (warnings, logs) here as well "
    "as in the run's log file.",
)
@click.version_option(package_name="smallfit")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """smallfit: distil the big model you call today into the smallest model that does the
    job, measured on your own data."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or os.environ.get("SMALLFIT_DEBUG") == "1"
    if debug:  # smallfit.logs reads it
        os.environ["SMALLFIT_DEBUG"] = "1"


def _print_fit(result: Any) -> None:
    click.echo("")
    click.echo(result.table)
    click.echo(f"run directory: {result.run_dir}")
    if result.report is not None:
        click.echo(f"report: {result.report}")
    click.echo(result.selection_json)


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="YAML fit config (see docs/config.md).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def fit(config_path: Path, quiet: bool) -> None:
    """Run the whole chain: data, teacher labels, students, evaluation, selection.

    A rerun skips every stage whose inputs have not changed."""
    from smallfit.config import load_fit_config
    from smallfit.pipeline import fit as run_fit

    config = load_fit_config(config_path)
    _print_fit(run_fit(config, progress=progress_wanted(quiet), log=_log))


@main.command()
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Dataset folder with train.jsonl (and test.jsonl), like ../shared/data/banking77.",
)
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="Where to write.")
@click.option("--quick", is_flag=True, help="A few-minute version on a slice of the data.")
@click.option("--write-config-only", is_flag=True, help="Write the config and stop.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(
    data_dir: Path, run_dir: Path | None, quick: bool, write_config_only: bool, quiet: bool
) -> None:
    """Write a fit config for a dataset folder and run it."""
    from smallfit.config import dump_fit_config
    from smallfit.demo import demo_config
    from smallfit.pipeline import fit as run_fit
    from smallfit.run.layout import RunDir

    config = demo_config(data_dir, run_dir=run_dir, quick=quick)
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    config_file = RunDir(config.run_dir).config_file
    config_file.write_text(dump_fit_config(config), encoding="utf-8")
    click.echo(f"config written to {config_file}")
    if write_config_only:
        return
    _print_fit(run_fit(config, progress=progress_wanted(quiet), log=_log))


@main.command()
@click.option(
    "--data",
    "train_file",
    required=True,
    type=click.Path(path_type=Path),
    help="Training file with gold labels (JSONL, CSV or Parquet).",
)
@click.option("--test", "test_file", type=click.Path(path_type=Path), default=None)
@click.option("--base", default="mpnet-base", show_default=True, help="Zoo alias, dir or hub id.")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option(
    "--min-steps",
    type=click.IntRange(min=0),
    default=None,
    help="At least this many optimizer steps: a small pool gets more passes [280; 0: exactly "
    "--epochs].",
)
@click.option("--text-field", default="text", show_default=True)
@click.option("--label-field", default="label", show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Model dir.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def teacher(
    train_file: Path,
    test_file: Path | None,
    base: str,
    epochs: float,
    min_steps: int | None,
    text_field: str,
    label_field: str,
    out: Path,
    quiet: bool,
) -> None:
    """Fine-tune a zoo base on gold labels: a stand-in for the big model you run today."""
    from smallfit.data import load_dataset
    from smallfit.data.config import DataConfig
    from smallfit.logs import beside, library_output
    from smallfit.teach import build_teacher
    from smallfit.teach.config import FinetuneTeacher
    from smallfit.train.config import TrainConfig

    dataset = load_dataset(
        DataConfig(train=train_file, test=test_file, text_field=text_field, label_field=label_field)
    )
    config = FinetuneTeacher(
        base=base, train=TrainConfig(epochs=epochs, min_steps=min_steps, lr=3e-5)
    )
    _log(config.train.schedule(len(dataset.train)).describe())
    with library_output(beside(out), what="teacher"):
        model = build_teacher(config, dataset, out_dir=out, progress=progress_wanted(quiet))
    assert model is not None
    accuracy = sum(
        p == g for p, g in zip(model.predict(dataset.test.texts), dataset.test.labels, strict=True)
    )
    click.echo(f"teacher saved to {out}; test accuracy {accuracy / len(dataset.test):.2%}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option(
    "--step",
    "steps",
    multiple=True,
    required=True,
    help=f"A step, in order: {cli_help()} (options after ':'; healing options as 'heal.epochs=2').",
)
@click.option(
    "--check-data",
    type=click.Path(path_type=Path),
    required=True,
    help="A data file as for fit (JSONL/CSV/Parquet): each step checks itself on its first "
    "512 texts, and steps that remove weights heal on all of them.",
)
@click.option(
    "--teacher",
    type=click.Path(path_type=Path),
    help="Heal against this model's probabilities (a smallfit model dir, e.g. a run's "
    "models/teacher); default: the model being compressed, as it was before.",
)
@click.option("--text-field", default="text", show_default=True)
@click.option("--label-field", default="label", show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output dir.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def compress(
    model_dir: Path,
    steps: tuple[str, ...],
    check_data: Path,
    teacher: Path | None,
    text_field: str,
    label_field: str,
    out: Path,
    quiet: bool,
) -> None:
    """Compress a saved model: apply steps in order, each checked on your data.

    Every step is checked against the model it will meet before any work starts."""
    from smallfit.compress import HealData, parse_step
    from smallfit.compress import compress as run_compress
    from smallfit.compress.core import check_steps
    from smallfit.data import read_split
    from smallfit.logs import beside, library_output
    from smallfit.models.base import manifest_with_architecture

    parsed = [parse_step(s) for s in steps]
    check_steps(manifest_with_architecture(model_dir), parsed)
    texts = read_split(check_data, text_field=text_field, label_field=label_field).texts
    heal = None
    with library_output(beside(out), what="compress"):  # the file compress() itself logs to
        if any(getattr(s, "heal", None) and s.heal.epochs > 0 for s in parsed):
            _log(f"healing against {teacher or model_dir} on {len(texts)} texts")
            heal = HealData.from_model(teacher or model_dir, texts)
        model = run_compress(
            model_dir,
            parsed,
            out_dir=out,
            check_texts=texts[:512],
            heal=heal,
            pool_texts=texts,
            progress=progress_wanted(quiet),
        )
    info = model.info
    click.echo(f"saved {out}: {info.backend}, {info.bytes_on_disk / 1e6:.1f} MB")
    for step in model.lineage.get("compression", []):
        shown = {k: v for k, v in step["metrics"].items() if not isinstance(v, dict | list)}
        click.echo(f"  {step['method']} ({step['seconds']:.0f}s): {shown}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--target",
    help="'accuracy >= teacher - 0.5pt' (default), 'accuracy >= 0.92', 'escalation <= 10%' or "
    "'cost <= 5' (USD per 1M queries).",
)
@click.option("--tiers", help="Candidate names, cheapest first, comma-separated [chosen,teacher].")
@click.option(
    "--confidence",
    type=click.Choice(["max_prob", "margin", "entropy"]),
    help="How sure a tier is [max_prob].",
)
@click.option(
    "--front/--no-front",
    default=None,
    help="Try a much cheaper candidate in front of the default tiers (route.front).",
)
@click.option("--abstain-label", help="Abstain with this label (e.g. oos) when very unsure.")
@click.option(
    "--in-scope-loss",
    type=float,
    help="Share of in-scope dev queries allowed to abstain [0.02]; with --abstain-label.",
)
@click.option("--abstain-score", help="Out-of-scope score of the abstaining tier, e.g. energy.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def route(
    run_dir: Path,
    target: str | None,
    tiers: str | None,
    confidence: str | None,
    front: bool | None,
    abstain_label: str | None,
    in_scope_loss: float | None,
    abstain_score: str | None,
    quiet: bool,
) -> None:
    """Calibrate the cascade of a finished run on its dev split and check it on test.

    Starts from the run's own route settings; the options override them. Writes
    RUN_DIR/cascade.json (the choice, the test check, the dev trade-off curve) and
    RUN_DIR/models/cascade, and adds the cascade to results.json."""
    from pydantic import ValidationError

    from smallfit.config import format_validation_error, load_fit_config
    from smallfit.errors import ConfigError
    from smallfit.logs import library_output
    from smallfit.route.config import RouteConfig
    from smallfit.route.stage import route_run
    from smallfit.run.layout import RunDir

    base = load_fit_config(RunDir(run_dir).config_file).route or RouteConfig()
    update: dict[str, Any] = base.model_dump()
    for key, value in (("target", target), ("confidence", confidence), ("front", front)):
        if value is not None:
            update[key] = value
    if tiers is not None:
        update["tiers"] = [t.strip() for t in tiers.split(",") if t.strip()]
    if abstain_label is not None or in_scope_loss is not None or abstain_score is not None:
        abstain = dict(update.get("abstain") or {})
        if abstain_label is not None:
            abstain["label"] = abstain_label
        if in_scope_loss is not None:
            abstain["in_scope_loss"] = in_scope_loss
        if abstain_score is not None:
            abstain["score"] = abstain_score
        update["abstain"] = abstain
    try:
        config = RouteConfig.model_validate(update)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source="route options")) from exc
    with library_output(RunDir(run_dir).log_file, what="route"):
        summary = route_run(run_dir, config, progress=progress_wanted(quiet), log=_log)
    click.echo(
        f"cascade: {' -> '.join(summary.tiers)}, thresholds "
        + ", ".join(f"{t:.4f}" for t in summary.thresholds)
    )
    click.echo(f"written: {RunDir(run_dir).cascade_file}, {summary.model_dir}")
    from smallfit.report import write_report

    click.echo(f"report rebuilt: {write_report(run_dir)}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), help="HTML file [RUN_DIR/report.html]."
)
@click.option("--volume", type=int, help="Queries a month today [report.volume_per_month].")
@click.option("--hour-usd", type=float, help="Machine-hour price [evaluate.machine_hour_usd].")
@click.option("--no-cards", is_flag=True, help="Skip the model cards beside each model.")
@click.option(
    "--from-log",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A serve --traffic-log: add the served tier mix, escalation rate and latency.",
)
def report(
    run_dir: Path,
    out: Path | None,
    volume: int | None,
    hour_usd: float | None,
    no_cards: bool,
    from_log: Path | None,
) -> None:
    """Write the HTML report of a run (and a model card beside each model) from its saved
    results: the verdict, the candidates, latency, the cascade, cost against volume, where the
    chosen model is weaker, lineage and environment."""
    from smallfit.report import write_report

    overrides = {k: v for k, v in (("volume_per_month", volume), ("hour_usd", hour_usd)) if v}
    path = write_report(run_dir, out, cards=not no_cards, overrides=overrides, traffic_log=from_log)
    click.echo(f"report written to {path}")


@main.command()
def zoo() -> None:
    """List the model aliases that work offline."""
    from smallfit.zoo import describe

    click.echo(describe())


def _log(message: str) -> None:
    click.echo(message, err=True)


main.add_command(serve)
main.add_command(capture)
main.add_command(task)
main.add_command(predict)
main.add_command(label)
main.add_command(distill)
