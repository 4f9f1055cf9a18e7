"""Contradictions between the parts of a fit config, caught when it is loaded (before any work):
each is one :class:`Conflict` naming the dotted keys involved. Also the defaults that follow
another key (a gold teacher turns the default cascade off; the abstention label follows the
data's out-of-scope label), filled in before validation so that a saved config reads back
equal."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from smallfit.config import FitConfig


@dataclass(frozen=True)
class Conflict:
    """Keys that contradict each other, and what to do about it."""

    keys: tuple[str, ...]
    message: str


class ConfigConflicts(ValueError):
    """Raised by :class:`~smallfit.config.FitConfig`'s validator: one line per conflict."""

    def __init__(self, conflicts: list[Conflict]) -> None:
        self.conflicts = conflicts
        super().__init__("\n".join(c.message for c in conflicts))


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` of a mapping, ``obj.key`` of a model, None otherwise."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None) if isinstance(obj, BaseModel) else None


def _given(obj: Any, key: str) -> bool:
    """Whether ``key`` was written (not left to its default) in a mapping or a model."""
    if isinstance(obj, dict):
        return key in obj
    return isinstance(obj, BaseModel) and key in obj.model_fields_set


def _replace(obj: Any, key: str, value: Any) -> Any:
    if isinstance(obj, dict):
        return {**obj, key: value}
    return obj.model_copy(update={key: value})


def fill_following_defaults(data: Any) -> Any:
    """The raw fit config (a mapping) with the defaults that follow other keys made explicit:

    - no `route` section and a gold teacher: `route: null` (the default cascade escalates to the
      teacher, and there is none);
    - `route.abstain` without a `label` and `data.out_of_scope` set: that label;
    - an extract task: a tagger student unless students are given, and a compression grid
      of what applies to extractors (ONNX and int8 for a tagger, GGUF Q8_0 and Q4_K_M for a
      generator) unless `compress` is null or has its own grid.
    """
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if _get(data.get("teacher"), "source") == "gold" and "route" not in data:
        data["route"] = None
    if data.get("task") == "extract":  # an extract task's own students; no cascade yet
        data.setdefault("students", [{"kind": "tagger"}])
        compress = data.get("compress", {})
        if isinstance(compress, dict) and "grid" not in compress:  # what applies to extractors
            data["compress"] = {**compress, "grid": {"layers": [None], "quantize": EXTRACT_GRID}}
    route = data.get("route")
    abstain = _get(route, "abstain")
    out_of_scope = _get(data.get("data"), "out_of_scope")
    follows = isinstance(abstain, dict | BaseModel) and not _given(abstain, "label")
    if isinstance(out_of_scope, str) and follows:
        data["route"] = _replace(route, "abstain", _replace(abstain, "label", out_of_scope))
    return data


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def conflicts(config: FitConfig) -> list[Conflict]:
    """Every contradiction between the parts of ``config`` (empty when it is consistent)."""
    found = [*_select(config), *_students(config), *_compress(config), *_route(config)]
    return found + list(_task(config))


_CLASSIFY_ONLY_DATA = ("labels", "out_of_scope", "hold_out_labels", "extra_train")
_EXTRACT_STEPS = ("onnx", "int8-dynamic", "gguf-q8_0", "gguf-q4_k_m")
EXTRACT_GRID = ["onnx", "int8-dynamic", "gguf-q8_0", "gguf-q4_k_m"]
"""An extract task's default compression: each source takes the choices that apply to it (a
tagger ONNX and int8, a generator's GGUF file Q8_0 and Q4_K_M)."""
_EXTRACT_METRICS = ("field_f1", "field_macro_f1", "doc_exact", "field_agreement")


def _task(config: FitConfig) -> Iterator[Conflict]:
    """What a task type does not take: students of the other task, an LLM teacher's options
    of the other task, and (for now) an extract task's abstention, a cost target, and
    compression steps other than ONNX, int8 and GGUF."""
    task = config.task
    for s in config.students:
        if s.task != task:
            yield Conflict(
                ("students", "task"),
                f"student {s.name!r} is a {s.kind} student, which learns a {s.task} task, but "
                f"task is {task}"
                + (" (its students are kind: tagger or generator)" if task == "extract" else ""),
            )
    metric = config.select.metric
    if metric is not None and (metric in _EXTRACT_METRICS) != (task == "extract"):
        yield Conflict(
            ("select.metric", "task"),
            f"select.metric {metric} is not a metric of the {task} task"
            + (f" (use one of {', '.join(_EXTRACT_METRICS)})" if task == "extract" else ""),
        )
    yield from _llm_teacher(config)
    if task != "extract":
        return
    for key in _CLASSIFY_ONLY_DATA:
        if getattr(config.data, key) not in (None, []):
            yield Conflict((f"data.{key}", "task"), f"data.{key} applies to a classify task only")
    route = config.route
    tiers = None if route is None else route.tiers
    if tiers is not None and (len(tiers) != 2 or tiers[-1] != "teacher"):
        yield Conflict(
            ("route.tiers", "task"),
            f"route.tiers {tiers}: an extract cascade has two tiers, a local extractor then "
            "the teacher",
        )
    if route is not None and route.abstain is not None:
        yield Conflict(("route.abstain", "task"), "route.abstain applies to a classify task only")
    if route is not None and route.target.strip().startswith("cost"):
        yield Conflict(
            ("route.target", "task"),
            "an extract cascade takes an F1 target ('accuracy >= teacher - 0.5pt' reads micro "
            "F1) or an escalation target, not a cost",
        )
    for candidate in config.compress.expand() if config.compress is not None else []:
        methods = [s.method for s in candidate.steps]
        if any(m not in _EXTRACT_STEPS for m in methods):
            yield Conflict(
                ("compress", "task"),
                f"compress candidate {candidate.name!r} ({' -> '.join(methods)}): an extractor "
                f"takes only {', '.join(_EXTRACT_STEPS)} steps for now",
            )


_CLASSIFY_ONLY_LLM = ("probabilities", "samples", "top_logprobs", "answer_key", "recorded")


def _llm_teacher(config: FitConfig) -> Iterator[Conflict]:
    """An LLM teacher's prompt slots and options that belong to the other task."""
    teacher: Any = config.teacher
    if teacher.source != "llm":
        return
    task = config.task
    from smallfit.llm.prompt import template_slots

    slot, other = ("fields", "labels") if task == "extract" else ("labels", "fields")
    if teacher.instruction is not None and other in template_slots(teacher.instruction):
        yield Conflict(
            ("teacher.instruction", "task"),
            f"teacher.instruction has a {{{other}}} slot, which the {task} task does not fill "
            f"(its list goes in {{{slot}}})",
        )
    if task != "extract":
        return
    defaults = type(teacher).model_fields
    for name in _CLASSIFY_ONLY_LLM:
        value = getattr(teacher, name)
        if value != defaults[name].default and not (name == "probabilities" and value == "argmax"):
            yield Conflict(
                (f"teacher.{name}", "task"),
                f"teacher.{name} applies to a classify task only (an extract task asks once, "
                "at temperature 0, and reads the fields from the JSON answer)",
            )


def _select(config: FitConfig) -> Iterator[Conflict]:
    from smallfit.select.config import parse_floor

    gold = not config.teacher.builds_model
    floor, metric = config.select.quality_floor, config.select.metric
    _, relative = parse_floor(floor)
    default = "" if "quality_floor" in config.select.model_fields_set else " (the default)"
    if relative and gold:
        yield Conflict(
            ("select.quality_floor", "teacher.source"),
            f"select.quality_floor {floor!r}{default} is relative to the teacher, but "
            "teacher.source is gold: no teacher is measured to set it; give an absolute floor "
            "such as select.quality_floor: '0.9'",
        )
    if metric in ("teacher_agreement", "field_agreement") and gold:
        yield Conflict(
            ("select.metric", "teacher.source"),
            f"select.metric is {metric}, but teacher.source is gold: there is no teacher "
            "to agree with (against gold labels: select.metric accuracy, or field_f1)",
        )


def _students(config: FitConfig) -> Iterator[Conflict]:
    if not config.students and not config.teacher.builds_model:
        yield Conflict(
            ("students", "teacher.source"),
            "students is empty and teacher.source is gold: there is no candidate to measure",
        )


def _compress(config: FitConfig) -> Iterator[Conflict]:
    compress = config.compress
    if compress is None:
        return
    kinds = {s.name: s.kind for s in config.students}
    transformers = [s.name for s in config.students if s.compressible]
    if compress.students is None and not transformers:
        yield Conflict(
            ("compress", "students"),
            "compress is set, but students has no transformer student to compress (students: "
            f"{_names(list(kinds))}); add one, or remove compress",
        )
    for name in compress.students or []:
        if name not in kinds:
            yield Conflict(
                ("compress.students", "students"),
                f"compress.students names {name!r}, which is not one of students "
                f"({_names(list(kinds))})",
            )
        elif name not in transformers:
            yield Conflict(
                ("compress.students", "students"),
                f"compress.students names {name!r}, a {kinds[name]} student: only transformer "
                f"students can be compressed ({_names(transformers)})",
            )
    if compress.students == []:
        yield Conflict(
            ("compress.students",),
            "compress.students is empty, so compress would build nothing; null compresses every "
            "transformer student",
        )
    if not compress.expand():
        yield Conflict(
            ("compress.grid", "compress.candidates"),
            "compress.grid is null and compress.candidates is empty: compress would build nothing",
        )


def candidate_names(config: FitConfig) -> list[str]:
    """The names of the candidates a run of ``config`` can measure: the teacher (unless gold
    labels stand in for it), the students, and the compressed students, ``<student>-<name>``."""
    names = [] if not config.teacher.builds_model else ["teacher"]
    names += [s.name for s in config.students]
    compress = config.compress
    if compress is not None:
        sources = [
            s.name
            for s in config.students
            if s.compressible and (compress.students is None or s.name in compress.students)
        ]
        names += [f"{s}-{c.name}" for s in sources for c in compress.expand()]
    return names


def _route(config: FitConfig) -> Iterator[Conflict]:
    route = config.route
    if route is None:
        return
    gold = not config.teacher.builds_model
    if route.tiers is None and gold:
        yield Conflict(
            ("route", "teacher.source"),
            "route is set, but teacher.source is gold: the default tiers (the selected "
            "candidate, then the teacher) need a teacher model; set route.tiers to candidates "
            "of the run, cheapest first, or route: null",
        )
    known = candidate_names(config)
    for tier in route.tiers or []:
        if tier == "teacher" and gold:
            yield Conflict(
                ("route.tiers", "teacher.source"),
                "route.tiers names 'teacher', but teacher.source is gold: there is no teacher "
                "model to escalate to",
            )
        elif tier not in known and not _is_model_dir(config.run_dir, tier):
            yield Conflict(
                ("route.tiers", "students"),
                f"route.tiers names {tier!r}, which is neither a candidate of this run "
                f"({_names(known)}) nor a model directory",
            )
    tiers = len(route.tiers) if route.tiers else 2
    if route.abstain is not None and route.abstain.tier >= tiers:
        which = "route.tiers" if route.tiers else "route.tiers' default: the selected, the teacher"
        yield Conflict(
            ("route.abstain.tier", "route.tiers"),
            f"route.abstain.tier {route.abstain.tier} is not one of the {tiers} tiers ({which}; "
            "counted from 0)",
        )
    out_of_scope = config.data.out_of_scope
    if route.abstain is not None and out_of_scope and route.abstain.label != out_of_scope:
        yield Conflict(
            ("route.abstain.label", "data.out_of_scope"),
            f"route.abstain.label {route.abstain.label!r} differs from data.out_of_scope "
            f"{out_of_scope!r}: the cascade would answer one label for what the data calls "
            "another; leave route.abstain.label out to use data.out_of_scope",
        )


def _is_model_dir(run_dir: Path, tier: str) -> bool:
    """Where the route stage looks for a tier that is not a candidate: the run's models, then a
    directory path."""
    from smallfit.run.layout import RunDir

    return RunDir(run_dir).model(tier).is_dir() or Path(tier).is_dir()
