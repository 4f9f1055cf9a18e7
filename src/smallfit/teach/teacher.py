"""Teachers: build one from its config (one handler per config type), and label a text pool.

Labelling writes the teacher's probabilities for a pool of texts into ``labels/``, cached by
content hash (teacher files + texts + label order), with a ledger line per call, so a rerun
never labels the same pool twice.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from smallfit.config import FitConfig
from smallfit.data import Dataset, load_dataset
from smallfit.errors import SmallfitError
from smallfit.hashing import hash_dir, hash_json, hash_texts
from smallfit.models.base import (
    MANIFEST,
    BaseClassifier,
    align_probs,
    load,
    load_as,
    write_npy,
)
from smallfit.registry import Registry
from smallfit.run.layout import TEACHER, RunDir, work_of
from smallfit.teach.config import FinetuneTeacher, GoldTeacher, LLMTeacher, ModelTeacher
from smallfit.train.config import KDConfig
from smallfit.train.distributed import is_main, wait_for_everyone

TEACHERS: Registry[Callable[..., Any]] = Registry("teacher")


def build_teacher(
    config: Any, dataset: Dataset, *, out_dir: Path, progress: bool = True
) -> BaseClassifier | None:
    """The teacher described by ``config``, saved in ``out_dir``; None for the gold teacher."""
    handler = TEACHERS.handler(config)
    return handler(config, dataset, out_dir=Path(out_dir), progress=progress)


def fit_dataset(config: FitConfig) -> Dataset:
    """The dataset a fit of ``config`` reads: gold optional unless the teacher or a student
    (``use_gold``) trains on it; the label set from a ``model`` teacher's own labels when the
    data has none."""
    teacher = config.teacher
    users = [
        f"students: {s.name} has use_gold" for s in config.students if getattr(s, "use_gold", False)
    ]
    if teacher.needs_gold:
        users.insert(0, f"teacher.source is {teacher.source}")
    required = None
    if users:
        required = (
            f"{'; '.join(users)}, so every row needs a gold label; an llm or model teacher "
            "labels the rows without one"
        )
    given = teacher.own_labels() if config.data.labels is None else None
    return load_dataset(config.data, gold_required=required, labels=given)


def one_hot(gold: list[str], labels: list[str]) -> np.ndarray:
    """(len(gold), len(labels)) float32 one-hot matrix."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(gold), len(labels)), dtype=np.float32)
    out[np.arange(len(gold)), [index[g] for g in gold]] = 1.0
    return out


@TEACHERS.register(FinetuneTeacher)
def _finetune(
    config: FinetuneTeacher, dataset: Dataset, *, out_dir: Path, progress: bool
) -> BaseClassifier:
    from smallfit import zoo
    from smallfit.models.transformer import TransformerClassifier
    from smallfit.train import train_classifier

    model = TransformerClassifier.from_base(
        zoo.resolve(config.base),
        labels=dataset.labels,
        name="teacher",
        max_length=config.train.max_length,
        lineage={"base": config.base, "recipe": "fine-tuned on gold labels"},
        seed=config.train.seed,
    )
    work = work_of(out_dir)
    summary = train_classifier(
        model,
        (
            dataset.train.texts,
            one_hot(dataset.train.labels, dataset.labels),
            dataset.dev.texts,
            one_hot(dataset.dev.labels, dataset.labels),
        ),
        train=config.train,
        kd=KDConfig(alpha=0.0),
        output_dir=work,
        progress=progress,
    )
    model.lineage["training"] = {**summary, "config": config.train.model_dump()}
    wait_for_everyone()  # every process of a distributed launch is done with the checkpoints
    if is_main():
        model.save(out_dir)
        shutil.rmtree(work, ignore_errors=True)
    return model


@TEACHERS.register(ModelTeacher)
def _user_model(
    config: ModelTeacher, dataset: Dataset, *, out_dir: Path, progress: bool
) -> BaseClassifier:
    path = Path(config.path)
    if not path.is_dir():
        raise SmallfitError(f"teacher.path: {path} is not a directory")
    if (path / MANIFEST).is_file():
        model = load(path)
    else:
        from smallfit.models.hf_sequence import HFSequenceClassifier

        model = HFSequenceClassifier.from_directory(path, name="teacher")
    align_probs(np.zeros((0, len(model.labels))), model.labels, dataset.labels)  # checks labels
    model.name = TEACHER
    model.save(out_dir)
    return model


LLM_CACHE = RunDir(".").answers_from(RunDir(".").model(TEACHER))
"""Where a run's LLM teacher keeps its answers and ledger, relative to ``models/teacher``."""


def api_options(config: LLMTeacher, cache: str | Path | None) -> dict[str, Any]:
    """An LLM teacher's endpoint and the options of its model (prices, budget, concurrency,
    answer store, lineage), the environment filling what the config leaves unset. Prices are
    None when neither states them: the labeller then uses those an earlier run recorded in the
    answer cache."""
    from smallfit.llm.client import env_prices, resolve_endpoint
    from smallfit.llm.labeller import Budget, Prices

    endpoint = resolve_endpoint(
        config.base_url,
        config.model,
        api_key_env=config.api_key_env,
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
    )
    if config.prices is not None:
        stated: tuple[float, float] | None = (
            config.prices.input_per_1m,
            config.prices.output_per_1m,
        )
    else:
        stated = env_prices()
    return {
        "endpoint": endpoint,
        "prices": Prices(*stated) if stated is not None else None,
        "budget": Budget(config.budget_usd, config.budget_tokens),
        "concurrency": config.concurrency,
        "cache": cache,
        "lineage": {"source": "LLM behind an OpenAI-compatible API", **endpoint.to_dict()},
    }


def llm_classifier(
    config: LLMTeacher,
    labels: list[str],
    *,
    examples: list[tuple[str, str]],
    name: str = "teacher",
    cache: str | Path | None = None,
) -> Any:
    """The LLMClassifier ``config`` describes (environment filled in), not yet checked."""
    from smallfit.llm.prompt import Prompt
    from smallfit.models.llm import LLMClassifier

    options = api_options(config, cache)
    prompt = Prompt(
        template=config.template("classify"),
        labels=list(labels),
        descriptions=dict(config.label_descriptions),
        examples=examples,
        answer=config.answer,
        probabilities=config.probabilities,
        samples=config.samples if config.probabilities == "samples" else 1,
        top_logprobs=config.top_logprobs,
        max_tokens=config.answer_tokens("classify"),
        seed=config.seed,
        context=[dict(m) for m in config.context],
        answer_key=config.answer_key,
        response_format_given=config.response_format,
    )
    return LLMClassifier(prompt=prompt, name=name, **options)


@TEACHERS.register(LLMTeacher)
def _llm(config: LLMTeacher, dataset: Dataset, *, out_dir: Path, progress: bool) -> BaseClassifier:
    from smallfit.llm.prompt import draw_examples
    from smallfit.models.llm import LLMClassifier

    gold = np.flatnonzero(dataset.train.gold).tolist()  # worked examples need a gold label
    examples = draw_examples(
        [dataset.train.texts[i] for i in gold],
        [dataset.train.labels[i] for i in gold],
        config.few_shot,
        seed=config.seed,
    )
    model = llm_classifier(config, dataset.labels, examples=examples, cache=LLM_CACHE)
    model.save(out_dir)
    model = load_as(out_dir, LLMClassifier)
    known = _seed_recorded(config, model) if config.recorded is not None else set()
    every = {*dataset.train.texts, *dataset.dev.texts, *dataset.test.texts}
    if not every <= known:
        model.labeller.check()  # server, key and model, before any paid call
    return model


def _seed_recorded(config: LLMTeacher, model: Any) -> set[str]:
    """Put ``config.recorded``'s answers into the teacher's answer cache (once per text); the
    texts that have one. A line that is not JSON, or has no text, names its file and line."""
    from smallfit.errors import DataError
    from smallfit.llm.answers import one_hot_row
    from smallfit.llm.store import StoredAnswer

    file = Path(config.recorded or "")
    labeller = model.labeller
    prompt, store = labeller.prompt, labeller.store
    known: set[str] = set()
    try:
        lines = file.read_text("utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read the recorded answers ({exc})", file=file) from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"invalid JSON ({exc})", file=file, line=number) from exc
        text, answer = row.get("text"), row.get(config.recorded_field)
        if not isinstance(text, str) or not text.strip():
            raise DataError("missing text", file=file, line=number, field="text")
        if answer is None:
            continue  # not answered yet: the teacher asks
        label = prompt.parse(str(answer))
        pt, ct = int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
        stored = StoredAnswer(
            label=label,
            status="ok" if label else "unparseable",
            probs=None if label is None else [float(p) for p in one_hot_row(label, prompt.labels)],
            reply=str(answer),
            prompt_tokens=pt,
            completion_tokens=ct,
            cost_usd=labeller.prices.cost(pt, ct),
        )
        store.record(
            labeller.key(text),
            model=labeller.endpoint.model,
            fingerprint=prompt.fingerprint,
            text=text,
            answer=stored,
            latency_ms=row.get("latency_ms"),
        )
        known.add(text)
    return known


@TEACHERS.register(GoldTeacher)
def _gold(config: GoldTeacher, dataset: Dataset, *, out_dir: Path, progress: bool) -> None:
    return None


def label_pool(
    teacher: BaseClassifier,
    texts: list[str],
    *,
    labels: list[str],
    teacher_dir: Path,
    run: RunDir,
    progress: bool = True,
    chunk: int = 512,
) -> np.ndarray:
    """The teacher's probabilities for ``texts`` (columns in ``labels`` order), cached.

    An LLM teacher answers through its own store (cached per text, resumable, budgeted); a
    text it gave no answer for (unparseable, or failed after retries) gets a row of NaN, for
    the caller to leave out."""
    run.labels_dir.mkdir(parents=True, exist_ok=True)
    own = teacher.label_texts(texts, progress=progress)
    if own is not None:
        return align_probs(own, teacher.labels, labels)
    key = hash_json(
        {"teacher": hash_dir(teacher_dir), "texts": hash_texts(texts), "labels": labels}
    )
    file = run.label_probs(key)
    if file.is_file():
        return np.load(file, allow_pickle=False)
    started = time.monotonic()
    parts = []
    with (
        teacher.bulk(),
        tqdm(total=len(texts), desc="teacher labelling", unit="text", disable=not progress) as bar,
    ):
        for start in range(0, len(texts), chunk):
            parts.append(teacher.predict_proba(texts[start : start + chunk]))
            bar.update(min(chunk, len(texts) - start))
    probs = np.concatenate(parts) if parts else np.zeros((0, len(labels)), np.float32)
    probs = align_probs(probs, teacher.labels, labels).astype(np.float32)
    write_npy(file, probs)
    seconds = time.monotonic() - started
    with open(run.labels_ledger, "a", encoding="utf-8") as ledger:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "teacher": teacher.name,
            "backend": teacher.info.backend,
            "rows": len(texts),
            "seconds": round(seconds, 2),
            "rows_per_s": round(len(texts) / seconds, 1) if seconds > 0 else None,
            "cache_key": key[:16],
            "cost_usd": 0.0,
        }
        ledger.write(json.dumps(entry) + "\n")
    return probs
