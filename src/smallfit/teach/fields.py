"""The teacher of an ``extract`` task, one per ``teacher.source``:

- ``finetune``: a token tagger on ``teacher.base`` trained on the gold fields (the stand-in for
  the big model);
- ``llm``: an LLM behind an OpenAI-compatible API, asked for the fields as JSON under their
  schema (:class:`~smallfit.models.llm_extractor.LLMExtractor`);
- ``model``: an extractor the user has: a smallfit extractor directory, or a Hugging Face
  token-classification directory whose labels are BIO tags (``O``, ``B-city``, ``I-city``);
- ``gold``: none (the gold fields stand in).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smallfit.data.fields import FieldDataset
from smallfit.errors import SmallfitError
from smallfit.fields import FieldSchema, Span, Values, align
from smallfit.models.base import MANIFEST
from smallfit.registry import Registry
from smallfit.run.layout import TEACHER
from smallfit.teach.config import FinetuneTeacher, GoldTeacher, LLMTeacher, ModelTeacher

Builder = Callable[[Any, FieldDataset, Path, bool], Any]


def targets(docs: list[Any], texts: list[str]) -> tuple[list[list[Span]], int]:
    """Each row's spans to train on: its own, else its values aligned to the text; and how
    many values were not found in their text (left out)."""
    out: list[list[Span]] = []
    missing = 0
    for doc, text in zip(docs, texts, strict=True):
        if doc is None:
            out.append([])
        elif doc.spans is not None:
            out.append(list(doc.spans))
        else:
            spans, absent = align(text, doc.values)
            out.append(spans)
            missing += len(absent)
    return out, missing


FIELD_TEACHERS: Registry[Builder] = Registry("extract teacher")


def build_field_teacher(config: Any, dataset: FieldDataset, out_dir: Path, progress: bool) -> Any:
    """The teacher ``config`` (a teacher config) describes, saved in ``out_dir``; None for
    gold."""
    return FIELD_TEACHERS.handler(config)(config, dataset, Path(out_dir), progress)


@FIELD_TEACHERS.register(FinetuneTeacher)
def _finetune(config: FinetuneTeacher, dataset: FieldDataset, out_dir: Path, progress: bool) -> Any:
    from smallfit.models.tagger import TokenTagger
    from smallfit.train.tagging import train_tagger

    model = TokenTagger.from_base(
        config.base,
        dataset.schema,
        name=TEACHER,
        max_length=config.train.max_length,
        seed=config.train.seed,
    )
    spans, _ = targets(dataset.train.docs, dataset.train.texts)
    train_tagger(model, dataset.train.texts, spans, config.train, progress=progress)
    model.lineage["recipe"] = "fine-tuned on gold fields"
    model.save(out_dir)
    return model


def draw_field_examples(
    texts: list[str], docs: list[Any], k: int, *, seed: int
) -> list[tuple[str, Values]]:
    """``k`` (text, values) pairs from the rows with gold, seeded."""
    rows = [i for i, d in enumerate(docs) if d is not None]
    if k <= 0 or not rows:
        return []
    chosen = random.Random(seed).sample(rows, min(k, len(rows)))
    return [(texts[i], docs[i].values) for i in chosen]


def llm_extractor(
    config: LLMTeacher,
    schema: FieldSchema,
    *,
    examples: list[tuple[str, Values]],
    name: str = TEACHER,
    cache: str | Path | None = None,
) -> Any:
    """The LLMExtractor ``config`` describes (environment filled in), not yet checked."""
    from smallfit.llm.field_prompt import FieldPrompt
    from smallfit.models.llm_extractor import LLMExtractor
    from smallfit.teach.teacher import api_options

    options = api_options(config, cache)
    prompt = FieldPrompt(
        template=config.template("extract"),
        schema=schema,
        descriptions=dict(config.label_descriptions),
        examples=examples,
        answer=config.answer,
        max_tokens=config.answer_tokens("extract", fields=len(schema)),
        seed=config.seed,
        context=[dict(m) for m in config.context],
        response_format_given=config.response_format,
    )
    return LLMExtractor(prompt=prompt, name=name, **options)


@FIELD_TEACHERS.register(LLMTeacher)
def _llm(config: LLMTeacher, dataset: FieldDataset, out_dir: Path, progress: bool) -> Any:
    from smallfit.models.llm_extractor import LLMExtractor
    from smallfit.teach.teacher import LLM_CACHE

    examples = draw_field_examples(
        dataset.train.texts, dataset.train.docs, config.few_shot, seed=config.seed
    )
    if config.few_shot and not examples:
        raise SmallfitError(
            f"teacher.few_shot {config.few_shot}: the training data has no row with gold fields "
            "to draw worked examples from"
        )
    llm_extractor(config, dataset.schema, examples=examples, cache=LLM_CACHE).save(out_dir)
    model = LLMExtractor.load(out_dir)
    model.labeller.check()  # server, key and model, before any paid call
    return model


@FIELD_TEACHERS.register(ModelTeacher)
def _user_model(config: ModelTeacher, dataset: FieldDataset, out_dir: Path, progress: bool) -> Any:
    """A smallfit extractor, or a Hugging Face token classifier over BIO tags, copied into the
    run as the teacher. It must know every field of the data; fields it knows beyond them are
    not read."""
    path = Path(config.path)
    if not path.is_dir():
        raise SmallfitError(f"teacher.path: {path} is not a directory")
    if (path / MANIFEST).is_file():
        from smallfit.models.extractor import load_extractor

        model: Any = load_extractor(path)
        missing = [n for n in dataset.schema if n not in model.schema.names]
        if missing:
            raise SmallfitError(
                f"teacher.path: {path} extracts {list(model.schema.names)}, not the data's "
                f"fields {missing}"
            )
        if list(model.schema.names) != list(dataset.schema.names):
            model = narrowed(model, dataset.schema, path)
    else:
        from smallfit.models.tagger import TokenTagger

        model = TokenTagger.from_hf_directory(path, dataset.schema, name=TEACHER)
    model.name = TEACHER
    if model.remote:  # an API model: its answer store stays where it is
        model.cache = model.store_path
    model.lineage = {**model.lineage, "recipe": f"the user's extractor ({path})"}
    model.save(out_dir)
    return model


def narrowed(model: Any, schema: FieldSchema, path: Path) -> Any:
    """A tagger that knows more fields than the data reads as the data's schema (its other
    fields' tags read as ``O``); other extractors cannot be narrowed."""
    from smallfit.models.tagger import TokenTagger

    if not isinstance(model, TokenTagger):
        raise SmallfitError(
            f"teacher.path: {path} extracts fields the data does not declare "
            f"({sorted(set(model.schema.names) - set(schema.names))}); only a token tagger can "
            "be narrowed to the data's fields"
        )
    from smallfit.models.tagger import narrowed_tags

    return TokenTagger(
        model.module,
        model.tokenizer,
        schema,
        name=model.name,
        max_length=model.max_length,
        lineage=model.lineage,
        tags=narrowed_tags(model.tags, schema),
    )


@FIELD_TEACHERS.register(GoldTeacher)
def _gold(config: GoldTeacher, dataset: FieldDataset, out_dir: Path, progress: bool) -> None:
    return None


def answer_rows(answers: list[Any]) -> list[dict[str, Any]]:
    """The teacher's answers as the run's label cache keeps them."""
    return [
        {
            "fields": a.values,
            "spans": [[s.start, s.end, s.field] for s in a.spans],
            **({} if a.valid else {"valid": False}),
        }
        for a in answers
    ]
