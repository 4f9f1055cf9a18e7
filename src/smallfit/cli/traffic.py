"""The traffic commands: ``serve`` (answer the application's requests) and ``capture`` (record
them in front of the upstream it calls today)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from smallfit.cli.common import engine_config, engine_options


def _log(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@click.argument("path", type=click.Path(path_type=Path, file_okay=False))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Serve YAML.")
@click.option("--host", help="Interface [127.0.0.1].")
@click.option("--port", type=int, help="Port [8000].")
@click.option("--max-batch", type=int, help="Texts per micro-batch [32].")
@click.option(
    "--max-wait-ms",
    type=float,
    help="Micro-batch wait after its first text [0: batch what queued meanwhile].",
)
@click.option(
    "--workers",
    "processes",
    type=int,
    help="Server processes on the port (a swap reaches them all; /metrics sums them) [1].",
)
@click.option("--threads", type=int, help="Compute threads per worker [cores - 1; cores/workers].")
@click.option("--escalation-log", type=click.Path(path_type=Path), help="JSONL of escalations.")
@click.option(
    "--traffic-log", type=click.Path(path_type=Path), help="JSONL of every answer's tier/latency."
)
@click.option("--shadow", type=click.Path(path_type=Path), help="A model to shadow the live one.")
@click.option("--watch", is_flag=True, default=None, help="Reload when the model changes.")
@engine_options(
    "replicas of this server behind Ray Serve's HTTP proxy (a swap reaches them all; /metrics "
    "sums them)",
    "Ray Serve replicas [one per CPU of the cluster].",
    workers_flag="--replicas",
)
def serve(
    path: Path,
    config_path: Path | None,
    engine: str,
    workers: int | None,
    ray_address: str | None,
    processes: int | None,
    **options: Any,
) -> None:
    """Serve a model over HTTP: PATH is a model directory, or a run directory (its cascade,
    else its selected model).

    POST /v1/classify; OpenAI's POST /v1/chat/completions and GET /v1/models (drop-in: the text
    is cut with the task's template when the run came from smallfit task, else it is the last
    user message); TEI's POST /predict; GET /healthz /readyz /metrics; POST /admin/swap and
    /admin/shadow (bearer token from SMALLFIT_ADMIN_TOKEN); OpenAPI docs at /docs.

    With --workers N: N processes accept on the port, each with its share of the cores (on one
    machine, the way past one core's requests a second). With --engine ray: --replicas copies
    of the same app behind Ray Serve's proxy on the same host and port."""
    from pydantic import ValidationError

    from smallfit.config import format_validation_error, read_yaml_mapping
    from smallfit.errors import ConfigError
    from smallfit.serve import serve as run
    from smallfit.serve.app import resolve_model_path
    from smallfit.serve.config import ServeConfig

    raw = read_yaml_mapping(config_path) if config_path else {}
    raw.update({k: v for k, v in options.items() if v is not None})
    if processes is not None:
        raw["workers"] = processes
    try:
        config = ServeConfig.model_validate(raw)
    except ValidationError as exc:
        source = str(config_path or "options")
        raise ConfigError(format_validation_error(exc, source=source)) from exc
    spread = engine_config(engine, workers, ray_address)
    if spread.kind == "ray" and config.workers > 1:
        raise ConfigError("--workers is for one machine; with --engine ray, give --replicas")
    model = resolve_model_path(path)
    _log(
        f"serving {model} on http://{config.host}:{config.port} (docs: /docs) ({engine}"
        + (f", {config.workers} workers)" if config.workers > 1 else ")")
    )
    if spread.kind == "ray":
        from smallfit.serve.ray_serve import serve_on_ray

        serve_on_ray(model, config, spread)
    else:
        run(model, config)


@click.command()
@click.option("--upstream", help="API root the application calls today (proxy mode).")
@click.option("--db", type=click.Path(path_type=Path), help="SQLite file [capture.sqlite].")
@click.option("--host", help="Interface [127.0.0.1].")
@click.option("--port", type=int, help="Port [8001].")
@click.option("--timeout", "timeout_s", type=float, help="Seconds an answer may take [600].")
@click.option(
    "--import",
    "imports",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Load this log file instead of proxying (repeatable).",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["openai", "pairs", "inputs"]),
    help="Format of --import files: openai (request/response or Batch API JSONL), pairs "
    "(input, output), inputs (bare inputs for the teacher).",
)
def capture(
    upstream: str | None,
    db: Path | None,
    host: str | None,
    port: int | None,
    timeout_s: float | None,
    imports: tuple[Path, ...],
    format_: str | None,
) -> None:
    """Record the application's LLM traffic: an OpenAI-compatible proxy in front of its
    upstream (point the application's base URL at http://HOST:PORT/v1), or --import of logs it
    already has.

    Each POST /v1/chat/completions request goes on unchanged with the client's own key, and the
    answer comes back unchanged (streamed or not); request and response bodies, usage, latency
    and status are stored in --db, never a header or a key."""
    from pydantic import ValidationError

    from smallfit.capture.config import CaptureConfig
    from smallfit.capture.store import CaptureStore
    from smallfit.config import format_validation_error
    from smallfit.errors import ConfigError

    if imports:
        if upstream:
            raise ConfigError("give --upstream (record live traffic) or --import, not both")
        if format_ is None:
            raise ConfigError("--import needs --format openai, pairs or inputs")
        from smallfit.capture.imports import import_logs

        file = db or Path("capture.sqlite")
        with CaptureStore(file) as store:
            added = import_logs(list(imports), format_, store)
            counts = store.counts()
        if added == 0:
            click.echo(f"nothing imported: these files were imported into {file} before")
            return
        click.echo(
            f"imported {added} exchanges into {file} ({counts['all']} in all, "
            f"{counts['complete']} with a whole answer)"
        )
        return
    if upstream is None:
        raise ConfigError("capture needs --upstream URL (or --import FILE --format ...)")
    options = {"upstream": upstream, "db": db, "host": host, "port": port, "timeout_s": timeout_s}
    try:
        config = CaptureConfig.model_validate({k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source="capture options")) from exc
    from smallfit.capture import run_capture

    _log(
        f"capturing http://{config.host}:{config.port}/v1 -> {config.upstream} into {config.db}: "
        "point the application's base URL there"
    )
    run_capture(config)


@click.command()
@click.argument("capture_db", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), default=Path("task"), show_default=True
)
@click.option("--template", type=int, help="Which template, when the capture holds several.")
@click.option("--upstream", help="API root the teacher calls for unanswered texts [captured one].")
@click.option(
    "--near-duplicates",
    type=click.FloatRange(0.5, 1.0),
    default=0.8,
    show_default=True,
    help="Merge texts this similar (Jaccard of character 5-grams; 1: exact duplicates only).",
)
def task(
    capture_db: Path, out: Path, template: int | None, upstream: str | None, near_duplicates: float
) -> None:
    """Turn captured traffic (CAPTURE_DB, from smallfit capture) into a task: OUT/task.yaml
    (the template, the answer's form, the labels with counts), OUT/data.jsonl (one row per
    distinct text with the upstream's answer) and OUT/fit.yaml (a config whose teacher is the
    upstream, its answers reused). Review task.yaml, then run smallfit fit --config OUT/fit.yaml."""
    from smallfit.capture.store import CaptureStore
    from smallfit.capture.task import build_task
    from smallfit.demo import demo_stages
    from smallfit.errors import SmallfitError

    if not capture_db.is_file():
        raise SmallfitError(f"{capture_db}: no such capture file (smallfit capture writes one)")
    with CaptureStore(capture_db) as store:
        # the demo's students, compression and measurements: the teacher is the upstream
        stages = {
            k: [s.model_dump(mode="json") for s in v]
            if isinstance(v, list)
            else v.model_dump(mode="json")
            for k, v in demo_stages().items()
            if k != "teacher"
        }
        summary = build_task(
            store,
            out,
            template=template,
            near_duplicates=near_duplicates,
            upstream=upstream,
            stages=stages,
        )
    click.echo(summary.describe())
