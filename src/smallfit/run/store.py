"""A run directory, read and written as typed records (:mod:`smallfit.run.records`).

:class:`Run` is the one reader and writer of a run's JSON files and saved test answers; every
read error is one line that names the file and, for a record, the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import ValidationError

from smallfit.errors import SmallfitError
from smallfit.models.base import MANIFEST, write_npy
from smallfit.models.base import write_json as _write_json
from smallfit.models.base import write_text as _write_text
from smallfit.run.layout import CASCADE, RunDir
from smallfit.run.records import (
    CandidateResult,
    CascadeSummary,
    DataSummary,
    LabelsSummary,
    Record,
    RunResults,
    StageRecord,
)

if TYPE_CHECKING:
    pass

R = TypeVar("R", bound=Record)

_KINDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "finite_number": "a finite number",
    "literal_error": "one of the allowed values",
}


def invalid(file: Path | str, raw: Any, exc: ValidationError) -> str:
    """One line for a record that does not validate: the file, the candidate (in a results
    file) and the field, and what is wrong with it (``and N more`` when there are several)."""
    errors = exc.errors()
    first = errors[0]
    loc = list(first["loc"])
    where = f"{file}:"
    if len(loc) >= 2 and loc[0] == "candidates" and isinstance(loc[1], int):
        name = _candidate_name(raw, loc[1])
        where += f" {name}:" if name else f" candidates[{loc[1]}]:"
        loc = loc[2:]
    # a union tries each member: report the member that got furthest, not its type name
    path = ".".join(str(p) for p in loc if not _union_member(p))
    kind = first["type"]
    if kind == "missing":
        what = f"missing field '{path}'"
    elif kind == "extra_forbidden":
        what = f"unknown field '{path}'"
    elif kind in ("value_error", "assertion_error"):
        message = str(first["msg"]).removeprefix("Value error, ")
        what = f"field '{path}' is {first['input']!r}, {message}" if path else message
    else:
        wanted = _KINDS.get(kind, str(first["msg"]).lower())
        what = f"field '{path}' is {first['input']!r}, not {wanted}"
    more = len(errors) - 1
    return f"{where} {what}" + (f" (and {more} more)" if more else "")


def _union_member(part: Any) -> bool:
    return isinstance(part, str) and (
        part in ("int", "float", "list[...]", "none") or part.startswith(("function-", "list["))
    )


def _candidate_name(raw: Any, index: int) -> str | None:
    try:
        name = raw["candidates"][index]["name"]
    except (KeyError, IndexError, TypeError):
        return None
    return f"candidate '{name}'" if isinstance(name, str) else None


def read_record(file: Path, kind: type[R], *, what: str = "file") -> R:
    """Read and validate one record file; a SmallfitError naming the file (and field)."""
    try:
        raw = json.loads(Path(file).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SmallfitError(f"{file}: no {what}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SmallfitError(f"{file}: corrupt {what} ({exc})") from exc
    return validate(file, raw, kind)


def validate(file: Path | str, raw: Any, kind: type[R]) -> R:
    """``raw`` (read from ``file``) as a ``kind`` record, or a one-line SmallfitError."""
    if not isinstance(raw, dict):
        raise SmallfitError(f"{file}: not a JSON object")
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        raise SmallfitError(invalid(file, raw, exc)) from None


def write_json(path: Path, obj: Any) -> None:
    """JSON, atomically, its directory made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, obj)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(path, text)


def write_jsonl(path: Path, rows: Sequence[Any]) -> None:
    """One JSON value a line, atomically, its directory made."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[Any] | None:
    """The rows of a JSONL file written by :func:`write_jsonl`; None when it is missing."""
    if not path.is_file():
        return None
    rows = []
    # "\n" only: a text may hold U+2028 and the like, which JSON leaves unescaped
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SmallfitError(f"{path}:{n}: corrupt JSON line ({exc.msg})") from exc
    return rows


class Run:
    """A run directory, typed: models, records and saved test answers."""

    def __init__(self, root: str | Path) -> None:
        self.dir = RunDir(root)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    @property
    def root(self) -> Path:
        return self.dir.root

    # -- models ----------------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        return self.dir.model(name)

    def has_model(self, name: str) -> bool:
        return (self.dir.model(name) / MANIFEST).is_file()

    def model(self, name: str) -> Any:
        """Candidate ``name``, loaded (a classifier, or a field extractor)."""
        from smallfit.models.loading import load_model

        if not self.has_model(name):
            raise SmallfitError(f"{self.dir.model(name)}: no model '{name}' in this run")
        return load_model(self.dir.model(name))

    def model_labels(self, name: str) -> list[str] | None:
        """The label order of a model's saved answers (its manifest), None without one."""
        file = self.dir.model(name) / MANIFEST
        if not file.is_file():
            return None
        try:
            labels = json.loads(file.read_text("utf-8")).get("labels")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise SmallfitError(f"{file}: corrupt manifest ({exc})") from exc
        return [str(x) for x in labels] if isinstance(labels, list) else None

    def served_model_dir(self) -> Path | None:
        """What serving a run answers with: its cascade when it has one, else the selection's
        chosen model; None when it has neither."""
        if self.has_model(CASCADE):
            return self.dir.model(CASCADE)
        if not self.dir.results_file.is_file():
            return None
        chosen = self.read_results().selection
        name = None if chosen is None else chosen.chosen
        if name is not None and self.has_model(name):
            return self.dir.model(name)
        return None

    # -- start, data, labels, stages -------------------------------------------------------------

    def start(self, config_yaml: str) -> None:
        """Create the run directory and record the config it is made with."""
        self.dir.models_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.dir.config_file, config_yaml)

    def write_data(self, summary: DataSummary) -> None:
        write_json(self.dir.data_file, summary.dump())

    def read_data(self) -> DataSummary | None:
        if not self.dir.data_file.is_file():
            return None
        return read_record(self.dir.data_file, DataSummary, what="data summary")

    def write_test_split(self, texts: Sequence[str], labels: Sequence[str]) -> None:
        """The test texts and gold labels in the order of every saved test answer."""
        rows = zip(texts, labels, strict=True)
        write_text(
            self.dir.test_split,
            "".join(
                json.dumps({"text": t, "label": g}, ensure_ascii=False) + "\n" for t, g in rows
            ),
        )

    def write_test_fields(self, texts: Sequence[str], docs: Sequence[Any]) -> None:
        """An extract task's test texts and gold fields (null where a text has none)."""
        write_jsonl(
            self.dir.test_split,
            [
                {"text": t, "fields": None if d is None else d.values}
                for t, d in zip(texts, docs, strict=True)
            ],
        )

    def read_test_split(self) -> tuple[list[str], list[str]] | None:
        """(texts, gold labels) of the saved test split, None when it is missing."""
        file = self.dir.test_split
        if not file.is_file():
            return None
        texts, gold = [], []
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
                texts.append(str(row["text"]))
                gold.append(str(row["label"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SmallfitError(f"{file}:{n}: not a {{text, label}} row ({exc})") from exc
        return texts, gold

    def write_labels_summary(self, summary: LabelsSummary) -> None:
        write_json(self.dir.labels_summary, summary.dump())

    def read_labels_summary(self) -> LabelsSummary | None:
        """``labels/summary.json``: None when missing (a gold teacher labels nothing)."""
        if not self.dir.labels_summary.is_file():
            return None
        return read_record(self.dir.labels_summary, LabelsSummary, what="labels summary")

    def read_stages(self) -> dict[str, StageRecord] | None:
        """``stages.json``, None when it is missing; an error when it is corrupt."""
        file = self.dir.stages_file
        if not file.is_file():
            return None
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SmallfitError(f"{file}: corrupt stages file ({exc})") from exc
        if not isinstance(raw, dict):
            raise SmallfitError(f"{file}: not an object of stages")
        out = {}
        for name, entry in raw.items():
            try:
                out[name] = StageRecord.model_validate(entry)
            except ValidationError as exc:
                raise SmallfitError(invalid(f"{file}: stage '{name}'", entry, exc)) from None
        return out

    # -- candidates ------------------------------------------------------------------------------

    def save_candidate(self, result: CandidateResult, test_probs: np.ndarray) -> None:
        """A candidate's test answers, then its results (the results file marks it done)."""
        write_npy(self.dir.test_probs(result.name), np.asarray(test_probs, dtype=np.float32))
        write_json(self.dir.result(result.name), result.dump())

    def candidate_files(self, name: str) -> tuple[Path, Path]:
        """What a measured candidate leaves: its results and its test answers."""
        return self.dir.result(name), self.dir.test_probs(name)

    def read_candidate(self, name: str) -> CandidateResult:
        return read_record(self.dir.result(name), CandidateResult, what="candidate results")

    def read_test_probs(self, name: str) -> np.ndarray | None:
        """Candidate ``name``'s saved test answers, None when there are none."""
        file = self.dir.test_probs(name)
        if not file.is_file():
            return None
        try:
            return np.load(file, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SmallfitError(f"{file}: corrupt probabilities ({exc})") from exc

    def save_answers(self, result: CandidateResult, rows: Sequence[dict[str, Any]]) -> None:
        """An extract candidate's test answers (JSONL), then its results."""
        write_jsonl(self.dir.test_answers(result.name), rows)
        write_json(self.dir.result(result.name), result.dump())

    def read_answers(self, name: str) -> list[dict[str, Any]] | None:
        """An extract candidate's saved test answers, None when there are none."""
        return read_jsonl(self.dir.test_answers(name))

    # -- the run's results and its cascade -------------------------------------------------------

    def write_results(self, results: RunResults) -> Path:
        write_json(self.dir.results_file, results.dump())
        return self.dir.results_file

    def read_results(self) -> RunResults:
        file = self.dir.results_file
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SmallfitError(f"{file}: no results file (has the run been evaluated?)") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SmallfitError(f"{file}: corrupt results file ({exc})") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("candidates"), list):
            raise SmallfitError(f"{file}: not a results file (no 'candidates' list)")
        return validate(file, raw, RunResults)

    def write_cascade(self, summary: CascadeSummary) -> None:
        write_json(self.dir.cascade_file, summary.dump())

    def read_cascade(self) -> CascadeSummary | None:
        if not self.dir.cascade_file.is_file():
            return None
        return read_record(self.dir.cascade_file, CascadeSummary, what="cascade summary")


class NoModel(SmallfitError):
    """A path that holds no model to serve or predict with."""


def resolve_model_path(path: str | Path) -> Path:
    """A model directory as is; a run directory -> its cascade, else its selected model (what
    ``smallfit serve`` and ``smallfit predict`` answer with)."""
    where = Path(path)
    if (where / MANIFEST).is_file():
        return where
    run = Run(where)
    try:
        served = run.served_model_dir()
    except SmallfitError as exc:  # a results file that does not read
        raise NoModel(str(exc)) from None
    if served is not None:
        return served
    if run.dir.results_file.is_file():
        raise NoModel(f"{where}: the run selected no model and has no cascade to serve")
    raise NoModel(f"{where}: neither a model directory ({MANIFEST}) nor a run directory")
