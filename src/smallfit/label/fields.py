"""``smallfit label --fields``: pull declared fields out of each text of a JSONL file with an LLM
teacher, as a library call (the extract twin of :func:`smallfit.label.label_file`).

Each text is asked once, at temperature 0, under the fields' JSON schema, through the same
client, answer cache, ledger and budgets as classification labelling. Output is JSONL in input
order, one line per row: ``{"line", "text", "fields", "spans", "status"}`` (and ``"gold"`` when
the row has gold ``fields``), where ``status`` is ``ok``, ``not-json`` or ``off-schema`` (an
answer that could not be read: no fields, never guessed at), ``failed`` (retries ran out) or
``not-sent`` (the budget stopped the run first). ``spans`` places each value in the text;
``values_not_in_text`` lists the values the LLM gave that the text does not hold (kept: it is
the LLM's answer). With gold on some rows, the LLM's field micro-F1 against it is reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smallfit.data.fields import read_field_split, with_gold_lists
from smallfit.engine.config import EngineConfig
from smallfit.errors import ConfigError, SmallfitError
from smallfit.fields import FieldSchema, align
from smallfit.label import LabelResult, ask_all, finished, summary_lines, teacher_config
from smallfit.logs import routed


def field_schema(fields: str) -> FieldSchema:
    """The fields ``--fields`` names: a JSON schema file (``.json``: an object with
    ``properties``, each a string or an array of strings), or names, comma-separated (each a
    string)."""
    if fields.endswith(".json"):
        path = Path(fields)
        if not path.is_file():
            raise ConfigError(f"--fields: no JSON schema file at {path}")
        try:
            return FieldSchema.from_json_schema(json.loads(path.read_text("utf-8")))
        except (json.JSONDecodeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"--fields: {path}: not a JSON schema of fields ({exc})") from None
    names = list(dict.fromkeys(f.strip() for f in fields.split(",") if f.strip()))
    if not names:
        raise ConfigError("--fields: name at least one field (city,date) or a JSON schema file")
    return FieldSchema.of(names)


@routed(lambda *_, out, **__: Path(out).with_suffix(".log"))  # library output: beside `out`
def extract_file(
    data_file: Path,
    *,
    fields: str,
    teacher_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    text_field: str = "text",
    fields_field: str = "fields",
    limit: int | None = None,
    cache: Path | None = None,
    out: Path,
    progress: bool = True,
    engine: EngineConfig | None = None,
) -> LabelResult:
    """Extract ``fields`` from each text of ``data_file`` into ``out`` (JSONL); see the module
    docstring. A row's gold ``fields`` holding a field not declared is an error naming its file
    and line, before any request."""
    from smallfit.evaluate.fields import field_quality
    from smallfit.teach.fields import draw_field_examples, llm_extractor

    config = teacher_config(teacher_file, overrides or {})
    schema = field_schema(fields)
    split = read_field_split(
        data_file, schema=schema, text_field=text_field, fields_field=fields_field, optional=True
    )
    texts = split.texts[:limit] if limit else split.texts
    docs = split.docs[: len(texts)]
    if not schema.lists:  # a JSON schema's own types stand
        schema = with_gold_lists(schema, docs)
    examples = draw_field_examples(texts, docs, config.few_shot, seed=config.seed)
    if config.few_shot and not examples:
        raise SmallfitError("few-shot examples need rows with gold fields (--fields-field)")
    out = Path(out)
    model = llm_extractor(
        config, schema, examples=examples, name="llm", cache=cache or out.with_suffix(".sqlite")
    )
    answers, report, cost, (prices, prices_source) = ask_all(model, texts, engine, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    scored: list[tuple[dict[str, list[str]], dict[str, list[str]]]] = []
    not_in_text = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            answer = answers[i]
            row: dict[str, Any] = {"line": split.lines[i], "text": text}
            if answer is None:
                row |= {"fields": None, "status": "failed" if not report.stopped else "not-sent"}
            elif answer.label is None:  # read strictly: why, never a guess
                row |= {"fields": None, "status": answer.status}
            else:
                values = json.loads(answer.label)
                spans, missing = align(text, values)
                not_in_text += len(missing)
                row |= {
                    "fields": schema.render(values),
                    "spans": [[s.start, s.end, s.field] for s in spans],
                    "status": "ok",
                }
                if missing:
                    row["values_not_in_text"] = [[f, v] for f, v in missing]
            doc = docs[i]
            if doc is not None:
                row["gold"] = schema.render(doc.values)
                if answer is not None:  # a sent text: an unreadable answer scores as empty
                    got = json.loads(answer.label) if answer.label is not None else {}
                    scored.append((got, doc.values))
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    lines = summary_lines(out, report, cost, prices, prices_source)
    if not_in_text:
        lines.append(f"{not_in_text} values the LLM gave are not in their text (kept, listed)")
    if scored:
        quality = field_quality([g for g, _ in scored], [w for _, w in scored], schema, resamples=0)
        lines.append(
            f"against gold on {len(scored)} rows: micro F1 {quality.micro_f1:.1%}, every field "
            f"right in {quality.doc_exact:.1%} (an unreadable answer counts as empty)"
        )
    return finished(out, report, lines, cost)
