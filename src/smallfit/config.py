"""A whole ``fit`` run is one :class:`FitConfig`: the sum of the stages' configs, each of which
lives beside its stage (``smallfit.data.config``, ``smallfit.teach.config``,
``smallfit.distill.config``, ``smallfit.train.config``, ``smallfit.compress.config``,
``smallfit.evaluate.config``, ``smallfit.select.config``, ``smallfit.route.config``,
``smallfit.serve.config``, ``smallfit.report.config``). This module reads and writes it as YAML,
and re-exports every stage config so that ``from smallfit.config import ...`` reaches them all."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from smallfit.compress.config import CompressCandidate, CompressConfig, CompressGrid
from smallfit.data.config import DataConfig
from smallfit.distill.config import (
    DecoderStudent,
    GeneratorStudent,
    LinearStudent,
    LoraSettings,
    StaticStudent,
    StudentBase,
    StudentConfig,
    TaggerStudent,
    TransformerStudent,
)
from smallfit.engine.config import EngineConfig
from smallfit.errors import ConfigError
from smallfit.evaluate.config import EvalConfig
from smallfit.llm.prompt import DEFAULT_INSTRUCTION
from smallfit.report.config import ReportConfig
from smallfit.route.config import AbstainConfig, RouteConfig, Target, parse_target
from smallfit.schema import Strict, parse_duration
from smallfit.select.config import SelectConfig, parse_floor
from smallfit.serve.config import ServeConfig
from smallfit.teach.config import (
    FinetuneTeacher,
    GoldTeacher,
    LLMPrices,
    LLMTeacher,
    ModelTeacher,
    TeacherBase,
    TeacherConfig,
)
from smallfit.train.config import (
    STUDENT_MIN_STEPS,
    TEACHER_MIN_STEPS,
    KDConfig,
    Schedule,
    TrainConfig,
)

__all__ = [
    "DEFAULT_INSTRUCTION",
    "STUDENT_MIN_STEPS",
    "TEACHER_MIN_STEPS",
    "AbstainConfig",
    "CompressCandidate",
    "CompressConfig",
    "CompressGrid",
    "DataConfig",
    "DecoderStudent",
    "EvalConfig",
    "FinetuneTeacher",
    "FitConfig",
    "GeneratorStudent",
    "GoldTeacher",
    "KDConfig",
    "LLMPrices",
    "LLMTeacher",
    "LinearStudent",
    "LoraSettings",
    "ModelTeacher",
    "ReportConfig",
    "RouteConfig",
    "Schedule",
    "SelectConfig",
    "ServeConfig",
    "StaticStudent",
    "Strict",
    "StudentBase",
    "StudentConfig",
    "TaggerStudent",
    "Target",
    "TeacherBase",
    "TeacherConfig",
    "TrainConfig",
    "TransformerStudent",
    "all_configs",
    "dump_fit_config",
    "format_validation_error",
    "load_fit_config",
    "parse_duration",
    "parse_floor",
    "parse_target",
    "read_yaml_mapping",
]


def _default_students() -> list[StudentConfig]:
    return [TransformerStudent(), LinearStudent()]


class FitConfig(Strict):
    """The whole run: data -> teacher labels -> students -> evaluate -> select."""

    task: Literal["classify", "extract"] = "classify"
    """`classify`: text -> one label of a set. `extract`: text -> a JSON object of declared
    fields (the data's rows carry `fields`, and where known `spans`)."""
    run_dir: Path = Path("runs/default")
    """Where the run is written (and reused on a rerun)."""
    seed: int = 0
    """Reserved for stages without their own seed."""
    data: DataConfig
    """The data."""
    teacher: TeacherConfig = FinetuneTeacher()
    """The teacher: `source: finetune | model | gold`."""
    students: list[StudentConfig] = Field(default_factory=lambda: _default_students())
    """The students, each `kind: transformer | linear | static | decoder` (an extract task's:
    `tagger | generator`)."""
    compress: CompressConfig | None = None
    """Compressed variants of the transformer students (layer dropping, pruning, ONNX, int8);
    null for none."""
    evaluate: EvalConfig = EvalConfig()
    """What is measured per candidate."""
    select: SelectConfig = SelectConfig()
    """How the winner is chosen."""
    route: RouteConfig | None = RouteConfig()
    """The cascade calibrated after selection; null for none. Left out, it is on when there is
    a teacher model and off with `teacher.source: gold` (its default tiers end with the
    teacher); a route section with a gold teacher must name its `tiers`."""
    report: ReportConfig = ReportConfig()
    """Prices and volumes of the report's cost section."""
    engine: EngineConfig = EngineConfig()
    """Where an LLM teacher's labelling runs: `kind: local` (this process) or `kind: ray`
    (its requests spread over Ray workers; see `smallfit label --engine ray`)."""

    @field_validator("students")
    @classmethod
    def _unique_names(cls, students: list[Any]) -> list[Any]:
        names = [s.name for s in students]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"student names must be unique; repeated: {', '.join(dupes)}")
        if "teacher" in names:
            raise ValueError("'teacher' is reserved for the teacher candidate")
        return students

    @field_validator("compress")
    @classmethod
    def _expandable(cls, compress: CompressConfig | None) -> CompressConfig | None:
        if compress is not None:
            compress.expand()
        return compress

    @model_validator(mode="before")
    @classmethod
    def _following_defaults(cls, data: Any) -> Any:
        from smallfit.config_checks import fill_following_defaults

        return fill_following_defaults(data)

    @model_validator(mode="after")
    def _consistent(self) -> FitConfig:
        """Parts that contradict each other fail here, before any work, each named."""
        from smallfit.config_checks import ConfigConflicts, conflicts

        found = conflicts(self)
        if found:
            raise ConfigConflicts(found)
        return self


def all_configs() -> list[type[BaseModel]]:
    """Every config class a user writes: FitConfig and everything reachable from its fields
    (each member of a union: every teacher, student and compression step), then ServeConfig
    and its reachable classes; each once, in the order first reached. The docs and the YAML
    round-trip test are built from this list, so a new config cannot be left out of them."""
    found: list[type[BaseModel]] = []

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in found:
                return
            found.append(annotation)
            for field in annotation.model_fields.values():
                visit(field.annotation)
            return
        for arg in get_args(annotation):
            visit(arg)

    visit(FitConfig)
    visit(ServeConfig)
    return found


def format_validation_error(exc: ValidationError, *, source: str) -> str:
    """One line per problem, each naming the dotted key path."""
    from smallfit.config_checks import ConfigConflicts

    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, ConfigConflicts):  # each names its own keys
            lines += [f"  {c.message}" for c in cause.conflicts]
            continue
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, with clear errors naming the file."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: no such config file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level")
    return raw


def load_fit_config(path: str | Path) -> FitConfig:
    """Read and validate a fit config YAML (relative paths: from the working directory)."""
    file = Path(path)
    raw = read_yaml_mapping(file)
    try:
        return FitConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=str(file))) from exc


def dump_fit_config(config: FitConfig) -> str:
    """YAML text that :func:`load_fit_config` reads back to an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
