"""An extract task's LLM teacher: the answer's JSON read strictly (unit tests), then `fit` with
llama.cpp's server as the teacher, behind a proxy that breaks some answers on purpose.

What a user relies on: every answer that is not JSON, or breaks the schema, is counted and
never guessed at; the texts it leaves out are named in the log and the labels summary; the
ledger agrees with the server's usage; a rerun asks the server nothing."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import shared_dataset

from smallfit.fields import FieldSchema
from smallfit.llm.client import Reply
from smallfit.llm.field_prompt import (
    NOT_JSON,
    OFF_SCHEMA,
    AnswerError,
    FieldPrompt,
    answer_schema,
    read_values,
)

DONE = {"latency_ms": 1.0, "finish_reason": "stop"}
SCHEMA = FieldSchema.of(["city", "date", "guests"], lists=["guests"])


@pytest.mark.parametrize(
    ("content", "values"),
    [
        ('{"city": "Paris", "date": "today"}', {"city": ["Paris"], "date": ["today"]}),
        ('{"date": "today", "city": "Paris"}', {"city": ["Paris"], "date": ["today"]}),
        ('```json\n{"guests": ["Ann", "Bo"]}\n```', {"guests": ["Ann", "Bo"]}),
        ('{"city": null, "date": "", "guests": []}', {}),
        ("{}", {}),
    ],
)
def test_an_answer_is_read_as_the_schema_says(content: str, values: dict) -> None:
    assert read_values(content, SCHEMA) == values


@pytest.mark.parametrize(
    ("content", "status", "reason"),
    [
        ("Sure! The city is Paris.", NOT_JSON, "not JSON"),
        ('{"city": "Par', NOT_JSON, "not JSON"),
        (None, NOT_JSON, "not JSON"),
        ('["Paris"]', OFF_SCHEMA, "a JSON list, not an object"),
        ('{"country": "France"}', OFF_SCHEMA, "field 'country' is not in the schema"),
        ('{"city": ["Paris"]}', OFF_SCHEMA, "field 'city' must be a string"),
        ('{"guests": "Ann"}', OFF_SCHEMA, "field 'guests' must be a list of strings"),
        ('{"city": 7}', OFF_SCHEMA, "field 'city' must be a string"),
    ],
)
def test_an_answer_off_the_schema_is_refused_with_its_reason(
    content: str | None, status: str, reason: str
) -> None:
    with pytest.raises(AnswerError, match=reason) as caught:
        read_values(content, SCHEMA)
    assert caught.value.status == status
    prompt = FieldPrompt("{fields}\n{text}", SCHEMA)
    reply = Reply(content=content, prompt_tokens=1, completion_tokens=1, tokens=None, **DONE)
    assert prompt.interpret([reply]) == (None, status, None)


def test_the_field_prompt_renders_its_schema_and_examples() -> None:
    prompt = FieldPrompt(
        "Fields:\n{fields}\nText: {text}",
        SCHEMA,
        descriptions={"date": "the day of the booking"},
        examples=[("2 for Rome", {"city": ["Rome"], "guests": ["2"]})],
    )
    messages = prompt.messages("Paris today")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "- date: the day of the booking" in messages[2]["content"]
    assert "- guests (a list)" in messages[2]["content"]
    assert json.loads(messages[1]["content"]) == {"city": "Rome", "guests": ["2"]}
    strict = prompt.response_format("json_schema")
    assert strict is not None and strict["json_schema"]["strict"] is True
    assert strict["json_schema"]["schema"]["required"] == ["city", "date", "guests"]
    assert strict["json_schema"]["schema"]["properties"]["city"]["type"] == ["string", "null"]
    lean = prompt.response_format("json_object")
    assert lean == {"type": "json_object", "schema": answer_schema(SCHEMA, strict=False)}
    assert "required" not in lean["schema"]
    assert prompt.response_format("text") is None
    ok = Reply(
        content='{"city": "Paris"}', prompt_tokens=1, completion_tokens=1, tokens=None, **DONE
    )
    assert prompt.interpret([ok]) == ('{"city":["Paris"]}', "ok", None)
    again = FieldPrompt.from_dict(json.loads(json.dumps(prompt.to_dict())))
    assert again == prompt and again.fingerprint == prompt.fingerprint
    other = FieldPrompt("Fields:\n{fields}\nText: {text}", FieldSchema.of(["city"]))
    assert other.fingerprint != FieldPrompt("Fields:\n{fields}\nText: {text}", SCHEMA).fingerprint


def test_an_llm_teacher_takes_its_tasks_defaults_and_keeps_a_classify_runs_identity() -> None:
    from smallfit.llm.field_prompt import DEFAULT_FIELD_INSTRUCTION
    from smallfit.llm.prompt import DEFAULT_INSTRUCTION
    from smallfit.teach.config import LLMTeacher

    teacher = LLMTeacher()
    assert teacher.template("classify") == DEFAULT_INSTRUCTION
    assert teacher.template("extract") == DEFAULT_FIELD_INSTRUCTION
    assert (teacher.answer_tokens("classify"), teacher.answer_tokens("extract")) == (48, 256)
    # a classify run made when these had plain defaults keeps its teacher's identity
    identity = teacher.identity()
    assert identity["instruction"] == DEFAULT_INSTRUCTION and identity["max_tokens"] == 48
    explicit = LLMTeacher(instruction=DEFAULT_INSTRUCTION, max_tokens=48)
    assert explicit.identity() == identity
    # an extract task's: unset is not the same teacher as any value written out
    assert explicit.identity("extract") != teacher.identity("extract")
    assert teacher.answer_tokens("extract", fields=39) == 64 + 12 * 39


def test_a_prompt_slot_of_the_other_task_is_refused() -> None:
    from smallfit.errors import SmallfitError
    from smallfit.llm.prompt import Prompt

    with pytest.raises(SmallfitError, match=r"classify task has a \{fields\} slot"):
        Prompt("{fields}: {text}", ["a", "b"])
    with pytest.raises(SmallfitError, match=r"extract task has a \{labels\} slot"):
        FieldPrompt("{labels}: {text}", SCHEMA)
    # escaped braces are text, not slots
    assert (
        FieldPrompt("{{labels}} {fields}: {text}", SCHEMA).user_message("x").startswith("{labels}")
    )


# ------------------------------------------------------------------------------------------
# fit, with llama.cpp's server as the teacher


def _playlist_rows(n: int, split: str) -> list[dict]:
    rows = []
    for line in (shared_dataset("snips_slots") / f"{split}.jsonl").read_text("utf-8").splitlines():
        row = json.loads(line)
        if row["intent"] == "AddToPlaylist":
            rows.append(row)
        if len(rows) == n:
            break
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


@pytest.mark.server
def test_fit_with_an_llm_teacher_counts_broken_answers_and_reruns_free(
    llama_url: str, tmp_path: Path, llm_env: str
) -> None:
    from smallfit.config import FitConfig
    from smallfit.pipeline import fit
    from smallfit.testing.fault_proxy import FaultProxy

    train_rows = _playlist_rows(24, "train")
    for row in train_rows[::2]:  # half the pool without gold: the teacher labels it
        del row["fields"], row["spans"]
    test_rows = _playlist_rows(8, "test")
    fields = sorted({f for r in [*train_rows, *test_rows] for f in r.get("fields", {})})
    train = _write(tmp_path / "train.jsonl", train_rows)
    test = _write(tmp_path / "test.jsonl", test_rows)
    faults = ("not-json", "off-schema", "429")
    with FaultProxy(llama_url, rate=0.25, faults=faults, seed=3) as proxy:
        config = FitConfig.model_validate(
            {
                "task": "extract",
                "run_dir": str(tmp_path / "run"),
                "data": {"train": str(train), "test": str(test), "fields": fields,
                         "dev_fraction": 0.25},
                "teacher": {"source": "llm", "base_url": proxy.url, "model": "smollm2",
                            "prices": {"input_per_1m": 0.15, "output_per_1m": 0.6},
                            "concurrency": 2, "few_shot": 2},
                "students": [{"kind": "tagger", "train": {"epochs": 2, "min_steps": 4}}],
                "compress": {"grid": {"layers": [None], "quantize": ["onnx"]}},
                "evaluate": {"isolate": False, "latency_queries": 10, "warmup": 1,
                             "throughput_batches": 2},
                "select": {"quality_floor": "0.0 * teacher"},
            }
        )  # fmt: skip
        lines: list[str] = []
        result = fit(config, progress=False, log=lines.append)
        asked = [r for r in proxy.log if r.path.endswith("/chat/completions")]
        broken = {r.fault for r in asked if r.fault in ("not-json", "off-schema")}
        assert broken, "the seed must break at least one answer"
        by_name = {c.name: c for c in result.results.candidates}
        teacher = by_name["teacher"]
        assert teacher.backend == "llm-extractor" and teacher.speed.remote is True
        assert teacher.cost.per_1m_queries_usd is not None and teacher.cost.per_1m_queries_usd > 0
        # each broken answer is counted by its reason, on test and in the pool, never guessed
        fields_q = teacher.quality.fields
        assert fields_q is not None and fields_q.invalid is not None
        test_texts = {r["text"] for r in test_rows}
        on_test = [r for r in asked if r.text and any(t in r.text for t in test_texts)]
        bad_test = sum(r.fault in broken for r in on_test)
        assert sum(fields_q.invalid.values()) == bad_test
        assert fields_q.json_valid == pytest.approx(1 - bad_test / 8)
        summary = json.loads((tmp_path / "run" / "labels" / "summary.json").read_text())
        pool = {r["text"] for r in train_rows}
        bad_pool = sum(
            r.fault in broken for r in asked if r.text and any(t in r.text for t in pool)
        )
        assert summary["unanswered"]["train"] + summary["unanswered"]["dev"] == bad_pool
        assert summary["train"] + summary["dev"] == 24 - bad_pool
        if bad_pool:
            assert any("could not be read for" in line for line in lines), lines
        audit = [line for line in lines if "the teacher against gold on the" in line]
        assert len(audit) == 1 and "micro F1" in audit[0]
        # the ledger holds what the server reported (a broken answer's tokens were paid too)
        ledger = tmp_path / "run" / "labels" / "llm-answers.sqlite"
        with sqlite3.connect(ledger) as db:
            prompt, completion = db.execute(
                "SELECT SUM(prompt_tokens), SUM(completion_tokens) FROM requests WHERE status='ok'"
            ).fetchone()
        server = proxy.upstream_usage()
        assert (prompt, completion) == (server["prompt_tokens"], server["completion_tokens"])
        manifest = json.loads(
            (tmp_path / "run" / "models" / "teacher" / "smallfit.json").read_text()
        )
        assert manifest["kind"] == "llm-extractor" and len(manifest["prompt"]["examples"]) == 2
        # the cascade's API tier is not probed again: its speed and cost are estimated
        cascade = by_name["cascade"]
        assert cascade.speed.remote is True and cascade.speed.threads["1"].estimated is True
        assert cascade.cost is not None and cascade.cost.per_1m_queries_usd is not None
        student = by_name["minilm-l6-tagger"]
        assert (
            student.quality.fields is not None
            and student.quality.fields.teacher_micro_f1 is not None
        )
        sent = len(asked)
        again = fit(config, progress=False, log=lambda _: None)
        assert again.stages_run == []
        assert len([r for r in proxy.log if r.path.endswith("/chat/completions")]) == sent


# ------------------------------------------------------------------------------------------
# smallfit label --fields: extraction from the command line


@pytest.mark.server
def test_label_extracts_fields_from_the_command_line(
    llama_url: str, tmp_path: Path, llm_env: str
) -> None:
    from test_cli import run_cli

    from smallfit.evaluate.fields import norm
    from smallfit.testing.fault_proxy import FaultProxy

    rows = _playlist_rows(10, "test")
    fields = sorted({f for r in rows for f in r["fields"]})
    for row in rows[1::2]:  # half without gold
        del row["fields"], row["spans"]
    data = _write(tmp_path / "requests.jsonl", rows)
    out = tmp_path / "fields.jsonl"
    command = [
        "label", "--data", str(data), "--fields", ",".join(fields), "--model", "smollm2",
        "--price-input", "0.15", "--price-output", "0.6", "--concurrency", "2", "-q",
        "-o", str(out),
    ]  # fmt: skip
    with FaultProxy(llama_url, rate=0.3, faults=("not-json", "off-schema"), seed=5) as proxy:
        done = run_cli(*command, "--base-url", proxy.url)
        assert done.returncode == 0, done.stderr
        asked = [r for r in proxy.log if r.path.endswith("/chat/completions")]
        written = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
        assert [r["line"] for r in written] == list(range(1, 11))
        assert [r["text"] for r in written] == [r["text"] for r in rows]
        for got in written:
            fault = next(r.fault for r in asked if r.text and got["text"] in r.text)
            if fault in ("not-json", "off-schema"):  # counted by its reason, never guessed
                assert got["status"] == fault and got["fields"] is None
                continue
            assert got["status"] == "ok" and set(got["fields"]) <= set(fields)
            for start, end, name in got["spans"]:  # placed as fit places them (loosely)
                value = got["fields"][name]
                given = value if isinstance(value, list) else [value]
                assert norm(got["text"][start:end]) in [norm(v) for v in given]
        assert {r["status"] for r in written} - {"ok"}, "the seed must break at least one answer"
        assert sum("gold" in r for r in written) == 5
        assert "against gold on 5 rows: micro F1" in done.stdout
        again = run_cli(*command, "--base-url", proxy.url)  # the cache answers: nothing sent
        assert again.returncode == 0 and out.read_text("utf-8").count("\n") == 10
        assert len([r for r in proxy.log if r.path.endswith("/chat/completions")]) == len(asked)
    # a gold field not declared: the file and line named, before any request
    narrow = run_cli(*command[:4], fields[0], *command[5:], "--base-url", "http://127.0.0.1:9/v1")
    assert narrow.returncode == 2
    assert re.search(
        r"requests\.jsonl:\d+ field 'fields\.\w+': .* not in the schema", narrow.stderr
    ), narrow.stderr


# ------------------------------------------------------------------------------------------
# an extractor the user has: a Hugging Face token classifier over BIO tags


@pytest.mark.parametrize(
    ("id2label", "message"),
    [
        ({"0": "O", "1": "CITY"}, r"labels \['CITY'\] are not BIO tags"),
        ({"0": "O", "1": "B-city", "2": "I-city"}, r"does not tag the data's fields \['date'\]"),
    ],
)
def test_a_user_tagger_whose_labels_do_not_fit_is_refused_by_name(
    tmp_path: Path, id2label: dict, message: str
) -> None:
    from smallfit.errors import SmallfitError
    from smallfit.models.tagger import TokenTagger

    (tmp_path / "config.json").write_text(json.dumps({"id2label": id2label}))
    with pytest.raises(SmallfitError, match=message):
        TokenTagger.from_hf_directory(tmp_path, FieldSchema.of(["city", "date"]), name="t")


@pytest.mark.slow
def test_a_user_token_classifier_teaches_an_extract_fit(tmp_path: Path) -> None:
    """A tagger trained here, saved as plain transformers writes it, with its tags in another
    order and a field the data does not declare: read through its own id2label, it gives the
    same answers, and `fit` takes it as the teacher of a pool without gold."""
    import torch

    from smallfit.config import FitConfig
    from smallfit.models.tagger import TokenTagger
    from smallfit.pipeline import fit
    from smallfit.train.config import TrainConfig
    from smallfit.train.tagging import train_tagger

    train_rows, test_rows = _playlist_rows(120, "train"), _playlist_rows(16, "test")
    fields = sorted({f for r in [*train_rows, *test_rows] for f in r["fields"]})
    schema = FieldSchema.of(fields)
    tagger = TokenTagger.from_base("minilm-l6", schema, name="mine", seed=0)
    texts = [r["text"] for r in train_rows]
    from smallfit.data.fields import read_field_split

    gold = read_field_split(_write(tmp_path / "gold.jsonl", train_rows), schema=schema)
    spans = [list(d.spans or ()) for d in gold.docs if d is not None]
    train_tagger(tagger, texts, spans, TrainConfig(epochs=3, lr=1e-4), progress=False)
    test_texts = [r["text"] for r in test_rows]
    expected = [a.values for a in tagger.extract(test_texts)]
    assert any(expected), "the tagger must find something to compare"

    # as a user's directory: tags reversed, plus a field the data does not declare
    head = tagger.module.classifier
    order = list(reversed(range(len(tagger.tags))))
    with torch.no_grad():
        weight = torch.cat([head.weight[order], torch.zeros(2, head.in_features)])
        bias = torch.cat([head.bias[order], torch.full((2,), -50.0)])
        wide = torch.nn.Linear(head.in_features, len(order) + 2)
        wide.weight.copy_(weight)
        wide.bias.copy_(bias)
    tagger.module.classifier = wide
    labels = [tagger.tags[i] for i in order] + ["B-genre", "I-genre"]
    tagger.module.config.num_labels = len(labels)
    tagger.module.config.id2label = dict(enumerate(labels))
    tagger.module.config.label2id = {t: i for i, t in enumerate(labels)}
    user_dir = tmp_path / "user-tagger"
    tagger.module.save_pretrained(user_dir)
    tagger.tokenizer.save_pretrained(user_dir)
    assert not (user_dir / "smallfit.json").exists()

    read = TokenTagger.from_hf_directory(user_dir, schema, name="teacher")
    assert [a.values for a in read.extract(test_texts)] == expected
    # the same head as a smallfit tagger of the wider schema, narrowed to the data's fields
    from smallfit.models.extractor import load_extractor
    from smallfit.teach.fields import narrowed

    wide_schema = FieldSchema.of([*fields, "genre"])
    TokenTagger(tagger.module, tagger.tokenizer, wide_schema, name="wide", tags=labels).save(
        tmp_path / "wide"
    )
    narrow = narrowed(load_extractor(tmp_path / "wide"), schema, tmp_path / "wide")
    assert [a.values for a in narrow.extract(test_texts)] == expected

    pool = [{"text": r["text"]} for r in _playlist_rows(40, "train")[20:]]  # no gold
    config = FitConfig.model_validate(
        {
            "task": "extract",
            "run_dir": str(tmp_path / "run"),
            "data": {"train": str(_write(tmp_path / "pool.jsonl", pool)),
                     "test": str(_write(tmp_path / "test.jsonl", test_rows)), "fields": fields},
            "teacher": {"source": "model", "path": str(user_dir)},
            "students": [{"kind": "tagger", "train": {"epochs": 1, "min_steps": 2}}],
            "compress": {"grid": {"layers": [None], "quantize": ["onnx"]}},
            "route": None,
            "evaluate": {"isolate": False, "latency_queries": 5, "warmup": 1,
                         "throughput_batches": 1},
            "select": {"quality_floor": "0.0 * teacher"},
        }
    )  # fmt: skip
    result = fit(config, progress=False, log=lambda _: None)
    teacher = result.results.candidates[0]
    assert teacher.name == "teacher" and teacher.backend == "tagger"
    rows = (tmp_path / "run" / "results" / "teacher.test_answers.jsonl").read_text("utf-8")
    assert [json.loads(line)["fields"] for line in rows.splitlines()] == expected
    summary = json.loads((tmp_path / "run" / "labels" / "summary.json").read_text())
    assert summary["train"] + summary["dev"] == 20 and summary["gold_rows"] == 0
    # exported to ONNX, the teacher keeps its own tag order
    from smallfit.compress.tagger_steps import export_tagger

    export_tagger(tmp_path / "run" / "models" / "teacher", tmp_path / "onnx", test_texts)
    onnx = load_extractor(tmp_path / "onnx")
    assert [a.values for a in onnx.extract(test_texts)] == expected
