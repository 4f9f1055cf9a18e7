"""A run's measurements on disk: ``results.json`` = environment + every candidate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.evaluate.environment import environment
from smallfit.models.base import write_json
from smallfit.run.layout import RunDir


def write_results(
    run_dir: Path, candidates: list[dict[str, Any]], *, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``run_dir/results.json`` = ``{"environment", "candidates", **extra}``; its path."""
    extra = dict(extra or {})
    clash = sorted({"environment", "candidates"} & set(extra))
    if clash:
        raise ValueError(f"extra may not replace {', '.join(clash)}")
    path = RunDir(run_dir).results_file
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"environment": environment(), "candidates": list(candidates), **extra})
    return path


def read_results(path: Path) -> dict[str, Any]:
    """Read a ``results.json`` (or the one inside run directory ``path``)."""
    file = Path(path)
    if file.is_dir():
        file = RunDir(file).results_file
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SmallfitError(f"{file}: no results file (has the run been evaluated?)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SmallfitError(f"{file}: corrupt results file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("candidates"), list):
        raise SmallfitError(f"{file}: not a results file (no 'candidates' list)")
    return data
