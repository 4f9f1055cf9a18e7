"""``smallfit label``: label a data file with an LLM, or extract its fields (``--fields``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from smallfit.cli.common import EXIT_BUDGET, engine_config, engine_options, progress_wanted


@click.command()
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(path_type=Path),
    help="Texts to label (JSONL, CSV or Parquet).",
)
@click.option(
    "--teacher",
    "teacher_file",
    type=click.Path(path_type=Path),
    help="YAML of the LLM teacher, as under 'teacher:' in a fit config (source: llm); the "
    "options below override it.",
)
@click.option("--base-url", help="API root, e.g. http://127.0.0.1:8000/v1.")
@click.option("--model", help="Model name as the server knows it [env SMALLFIT_LLM_MODEL].")
@click.option("--api-key-env", help="Variable holding the API key [OPENAI_API_KEY].")
@click.option("--price-input", type=float, help="Dollars per 1M prompt tokens.")
@click.option("--price-output", type=float, help="Dollars per 1M completion tokens.")
@click.option("--concurrency", type=int, help="Requests in flight [4].")
@click.option("--timeout", "timeout_s", type=float, help="Seconds per request [60].")
@click.option("--budget-usd", type=float, help="Stop cleanly before spending more.")
@click.option("--budget-tokens", type=int, help="Stop cleanly before using more tokens.")
@click.option(
    "--probabilities",
    type=click.Choice(["logprobs", "samples", "argmax"]),
    help="How probabilities are estimated [logprobs].",
)
@click.option("--few-shot", type=int, help="Worked examples from the data's gold labels [0].")
@click.option(
    "--labels",
    "label_list",
    help="The label set, comma-separated (default: the labels found in --label-field).",
)
@click.option("--text-field", default="text", show_default=True)
@click.option(
    "--label-field",
    default="label",
    show_default=True,
    help="Gold labels (optional with --labels; '' for none): the label set, few-shot "
    "examples and the agreement report.",
)
@click.option(
    "--fields",
    help="Extract these fields instead of choosing a label: names, comma-separated "
    "(city,date), or a JSON schema file (.json). The data is JSONL; a row's gold goes under "
    "--fields-field (optional).",
)
@click.option("--fields-field", default="fields", show_default=True, help="Gold fields (extract).")
@click.option("--limit", type=int, help="Label only the first N rows.")
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    help="SQLite answer cache and ledger [OUT with .sqlite]; a rerun sends nothing twice.",
)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Labels (JSONL).")
@engine_options(
    "the requests spread over Ray workers, the cache and ledger kept here",
    "Ray workers, each with --concurrency requests in flight [one per machine].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def label(
    data_file: Path,
    teacher_file: Path | None,
    label_list: str | None,
    text_field: str,
    label_field: str,
    fields: str | None,
    fields_field: str,
    limit: int | None,
    cache: Path | None,
    out: Path,
    engine: str,
    workers: int | None,
    ray_address: str | None,
    quiet: bool,
    **overrides: Any,
) -> None:
    """Label a dataset with an LLM behind an OpenAI-compatible API.

    Resumable (every answer is cached as it arrives), concurrent, retried on 429/5xx/timeouts,
    within a money and token budget, with a per-request ledger. The server, key and model are
    checked before the first paid call. Exit code 3: stopped by the budget (what was done is
    written). With --engine ray the requests run on Ray workers; an unreachable cluster is
    refused before any paid request.

    With --fields, each text's fields are extracted instead, as JSON under their schema (an
    answer that is not JSON or breaks the schema is recorded with why, never guessed at)."""
    from smallfit.errors import ConfigError
    from smallfit.label import label_file

    spread = engine_config(engine, workers, ray_address)
    settings = {k: v for k, v in overrides.items() if v is not None}
    if fields is not None:
        from smallfit.label.fields import extract_file

        if label_list or "probabilities" in settings:
            raise ConfigError("--labels and --probabilities are for labels, not --fields")
        result = extract_file(
            data_file,
            fields=fields,
            teacher_file=teacher_file,
            overrides=settings,
            text_field=text_field,
            fields_field=fields_field,
            limit=limit,
            cache=cache,
            out=out,
            progress=progress_wanted(quiet),
            engine=spread,
        )
    else:
        result = label_file(
            data_file,
            teacher_file=teacher_file,
            overrides=settings,
            label_list=label_list,
            text_field=text_field,
            label_field=label_field or None,
            limit=limit,
            cache=cache,
            out=out,
            progress=progress_wanted(quiet),
            engine=spread,
        )
    for line in result.lines:
        click.echo(line)
    if result.stopped_by_budget:
        click.get_current_context().exit(EXIT_BUDGET)
