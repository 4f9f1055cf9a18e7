"""The extract task's foundations on the real SNIPS slots data: reading fields and spans with
errors that name file, line and field; aligning values to the text; the metrics; BIO tags
through a real tokenizer and back; a MiniLM tagger trained, saved and loaded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dataset

from smallfit.data.fields import FieldSchema, Span, align, read_field_split, schema_of
from smallfit.errors import DataError
from smallfit.evaluate.fields import field_quality


@pytest.fixture(scope="module")
def slots() -> Path:
    return shared_dataset("snips_slots")


def test_snips_slots_reads_with_every_span_checked(slots: Path) -> None:
    test = read_field_split(slots / "test.jsonl", schema=None)
    assert len(test) == 700 and test.n_gold == 700
    schema = schema_of([test])
    assert len(schema) == 39 and "party_size_number" in schema.names
    spans = sum(len(d.spans or ()) for d in test.docs if d is not None)
    assert spans == 1794  # SOURCE.md's count
    doc = test.docs[0]
    assert doc is not None and doc.spans is not None
    for span in doc.spans:
        assert test.texts[0][span.start : span.end] in doc.values[span.field]


def _write(tmp_path: Path, rows: list[object]) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"text": "book a table in Paris", "fields": {"city": "Paris"}}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"text": "hi there", "fields": {"town": "x"}},
            r"bad.jsonl:2 field 'fields.town': field 'town' is not in the schema \(city",
        ),
        (
            {
                "text": "in Paris",
                "fields": {"city": "Paris"},
                "spans": [{"start": 3, "end": 30, "field": "city"}],
            },
            r"bad.jsonl:2 field 'spans\[0\]': span 3:30 is outside its text \(8 characters\)",
        ),
        (
            {
                "text": "in Paris",
                "fields": {"city": "Paris"},
                "spans": [{"start": 0, "end": 2, "field": "city"}],
            },
            r"bad.jsonl:2 field 'spans\[0\]': the span's text 'in' differs from the value 'Paris'",
        ),
        (
            {"text": "in Paris", "fields": {"city": 3}},
            r"bad.jsonl:2 field 'fields.city': must be a string or a list of strings",
        ),
        ({"text": "in Paris"}, r"bad.jsonl:2 field 'fields': missing field 'fields'"),
    ],
)
def test_bad_rows_are_named_by_file_line_and_field(tmp_path: Path, row: dict, message: str) -> None:
    path = _write(tmp_path, [GOOD, row])
    with pytest.raises(DataError, match=message):
        read_field_split(path, schema=FieldSchema.of(["city"]))


def test_a_row_without_fields_is_unlabelled_when_gold_is_optional(tmp_path: Path) -> None:
    split = read_field_split(
        _write(tmp_path, [GOOD, {"text": "no gold"}]), schema=None, optional=True
    )
    assert split.n_gold == 1 and split.docs[1] is None


def test_values_align_to_the_text_and_absent_ones_are_counted_never_invented() -> None:
    text = "play the album Thriller by michael  jackson in Paris"
    spans, missing = align(
        text, {"album": ["thriller"], "artist": ["Michael Jackson"], "city": ["Berlin"]}
    )
    got = {s.field: text[s.start : s.end] for s in spans}
    assert got == {"album": "Thriller", "artist": "michael  jackson"}
    assert missing == [("city", "Berlin")]
    # longer values first and whole words first: "2" is not taken out of "12 pm"
    text = "at 12 pm for 2 people"
    spans, missing = align(text, {"party_size": ["2"], "time": ["12 pm"]})
    assert [(s.field, text[s.start : s.end], s.start) for s in spans] == [
        ("time", "12 pm", 3),
        ("party_size", "2", 13),
    ]


def test_field_metrics_by_hand() -> None:
    schema = FieldSchema.of(["city", "date", "item"], lists=["item"])
    gold = [{"city": ["Paris"], "item": ["a", "b"]}, {"date": ["today"]}, {}]
    answers = [{"city": ["paris "], "item": ["a"]}, {"date": ["tomorrow"]}, {"city": ["Rome"]}]
    q = field_quality(answers, gold, schema, valid=[True, True, False], resamples=200)
    # tp: city 1, item 1; fp: date 1, city 1; fn: item 1, date 1
    assert q.micro_precision == pytest.approx(2 / 4)
    assert q.micro_recall == pytest.approx(2 / 4)
    assert q.micro_f1 == pytest.approx(0.5)
    assert q.per_field["city"].f1 == pytest.approx(2 / 3)
    assert q.per_field["item"].recall == pytest.approx(0.5)
    assert q.per_field["item"].exact == pytest.approx(2 / 3)  # docs 2 and 3: both empty
    assert q.macro_f1 == pytest.approx(np.mean([2 / 3, 0.0, 2 / 3]))
    assert q.doc_exact == 0.0 and q.json_valid == pytest.approx(2 / 3)
    assert q.micro_f1_ci is not None and q.micro_f1_ci[0] <= 0.5 <= q.micro_f1_ci[1]
    assert [name for name, _ in q.weakest(1)] == ["date"]


def test_a_schema_from_json_schema_and_back() -> None:
    schema = FieldSchema.from_json_schema(
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "dish": {"type": "array", "items": {"type": "string"}},
            },
        }
    )
    assert schema.names == ("city", "dish") and schema.lists == {"dish"}
    assert FieldSchema.from_json_schema(schema.json_schema()) == schema
    assert schema.render({"city": ["Paris", "Rome"], "dish": ["a", "b"]}) == {
        "city": "Paris",
        "dish": ["a", "b"],
    }
    with pytest.raises(ValueError, match="'n': a field is a string"):
        FieldSchema.from_json_schema({"properties": {"n": {"type": "integer"}}})


def test_bio_tags_through_a_real_tokenizer_and_back_give_the_gold_values(slots: Path) -> None:
    from transformers import AutoTokenizer

    from smallfit.models.tagger import IGNORE, bio_tags, decode, token_targets
    from smallfit.zoo import resolve

    test = read_field_split(slots / "test.jsonl", schema=None)
    schema = schema_of([test])
    tags = bio_tags(schema)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve("minilm-l6")))
    enc = tokenizer(test.texts, return_offsets_mapping=True)
    same = 0
    for text, doc, offsets in zip(test.texts, test.docs, enc["offset_mapping"], strict=True):
        assert doc is not None and doc.spans is not None
        target = token_targets(offsets, doc.spans, tags)
        probs = np.zeros((len(target), len(tags)))
        probs[np.arange(len(target)), [0 if t == IGNORE else t for t in target]] = 1.0
        got = decode(text, offsets, probs, tags)
        same += got.values == doc.values
        assert got.confidence == 1.0
    assert same / len(test) >= 0.99  # a span inside a word is widened to the word


def test_a_decoded_span_is_the_texts_own_characters_with_its_lowest_probability() -> None:
    from smallfit.models.tagger import decode

    tags = ["O", "B-city", "I-city"]
    text = "fly to new york"
    offsets = [(0, 0), (0, 3), (4, 6), (7, 10), (11, 15), (0, 0)]
    probs = np.array(
        [[1, 0, 0], [0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.3, 0.6], [1, 0, 0]]
    )
    got = decode(text, offsets, probs, tags)
    assert got.values == {"city": ["new york"]} and got.spans == [Span(7, 15, "city")]
    assert got.field_confidence == {"city": pytest.approx(0.6)}
    assert got.confidence == pytest.approx(0.6)


@pytest.mark.slow
def test_a_minilm_tagger_learns_snips_fields_and_reloads_the_same(
    slots: Path, tmp_path: Path
) -> None:
    from smallfit.models.tagger import TokenTagger
    from smallfit.train.config import TrainConfig
    from smallfit.train.tagging import train_tagger

    train = read_field_split(slots / "train.jsonl", schema=None).subset(range(0, 13784, 23))
    test = read_field_split(slots / "test.jsonl", schema=None).subset(range(0, 700, 7))
    schema = schema_of([train, test])
    tagger = TokenTagger.from_base("minilm-l6", schema, name="tagger", seed=0)
    spans = [d.spans or () for d in train.docs if d is not None]
    report = train_tagger(
        tagger, train.texts, spans, TrainConfig(epochs=3, lr=1e-4), progress=False
    )
    assert report["steps"] == 3 * -(-len(train) // 32)
    answers = tagger.extract(test.texts)
    gold = [d.values for d in test.docs if d is not None]
    quality = field_quality([a.values for a in answers], gold, schema, resamples=0)
    assert quality.micro_f1 > 0.5  # 600 texts, 57 steps: far above chance, far from done
    for answer, text in zip(answers, test.texts, strict=True):
        assert all(text[s.start : s.end] in answer.values[s.field] for s in answer.spans)
    again = TokenTagger.load(tagger.save(tmp_path / "tagger"))
    assert [a.values for a in again.extract(test.texts)] == [a.values for a in answers]

    # ONNX: the same answers without torch; int8: nearly every token keeps its tag
    from smallfit.compress.tagger_steps import export_tagger, quantize_tagger
    from smallfit.models.extractor import load_extractor

    checked = export_tagger(tmp_path / "tagger", tmp_path / "onnx", train.texts)
    assert checked["max_abs_prob_diff"] <= 1e-3 and checked["tag_agreement"] > 0.999
    onnx = load_extractor(tmp_path / "onnx")
    assert onnx.kind == "tagger-onnx"
    assert [a.values for a in onnx.extract(test.texts)] == [a.values for a in answers]
    # smallfit predict over a file: the same fields, row for row, with their confidences
    from smallfit.predict import load_answerer, predict_file

    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in test.texts), "utf-8")
    predict_file(load_answerer(tmp_path / "onnx"), source, tmp_path / "fields.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "fields.jsonl").read_text().splitlines()]
    assert [r["fields"] for r in rows] == [schema.render(a.values) for a in answers]
    assert all(r["tier"] == onnx.name and 0 <= r["confidence"] <= 1 for r in rows)
    report = quantize_tagger(tmp_path / "onnx", tmp_path / "int8", train.texts)
    assert report["tag_agreement"] > 0.95
    int8 = load_extractor(tmp_path / "int8")
    assert int8.bytes_on_disk < onnx.bytes_on_disk / 3
    assert len(int8.extract(test.texts)) == len(test)

    # served over a real socket: /v1/extract, the drop-in chat route, and 409 for /v1/classify
    import httpx
    import openai

    from smallfit.serve.app import create_app
    from smallfit.serve.config import ServeConfig
    from smallfit.testing.http import serving

    expected = [schema.render(a.values) for a in onnx.extract(test.texts[:5])]
    traffic = tmp_path / "traffic.jsonl"
    config = ServeConfig(traffic_log=traffic, shadow=tmp_path / "int8")
    with serving(create_app(tmp_path / "onnx", config)) as url:
        got = httpx.post(url + "/v1/extract", json={"texts": test.texts[:5]}).json()
        assert [r["fields"] for r in got["results"]] == expected
        # one traffic row per text; the int8 shadow compared on every one
        rows = [json.loads(line) for line in traffic.read_text("utf-8").splitlines()]
        assert [r["tier"] for r in rows] == [onnx.name] * 5 and rows[0]["tier_index"] == 0
        shadow_int8 = [a.values for a in int8.extract(test.texts[:5])]
        agreed = sum(
            a.values == b for a, b in zip(onnx.extract(test.texts[:5]), shadow_int8, strict=True)
        )
        for _ in range(200):  # the shadow answers after the response
            metrics = httpx.get(url + "/metrics").text
            if "smallfit_shadow_compared_total 5.0" in metrics:
                break
            time.sleep(0.05)
        assert "smallfit_shadow_compared_total 5.0" in metrics
        assert f"smallfit_shadow_agreed_total {float(agreed)}" in metrics
        first = got["results"][0]
        for span in first["spans"]:
            assert test.texts[0][span["start"] : span["end"]] in str(first["fields"][span["field"]])
        assert httpx.post(url + "/v1/classify", json={"texts": ["hi"]}).status_code == 409
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        try:
            reply = client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": test.texts[0]}]
            )
            structured = client.chat.completions.create(  # the application's own schema
                model="x",
                messages=[{"role": "user", "content": test.texts[0]}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "slots", "schema": schema.json_schema()},
                },
            )
        finally:
            client.close()
        assert json.loads(reply.choices[0].message.content or "") == expected[0]
        assert json.loads(structured.choices[0].message.content or "") == expected[0]
        assert httpx.post(url + "/v1/extract", json={"texts": []}).status_code == 422


@pytest.mark.slow
def test_fit_runs_an_extract_task_end_to_end(slots: Path, tmp_path: Path) -> None:
    """task: extract through `fit`: a tagger teacher on gold, a tagger student on its answers,
    both measured (field F1 with its interval, speed, size) and one selected by field F1; a
    rerun reuses every stage."""
    from smallfit.config import FitConfig
    from smallfit.pipeline import fit

    config = FitConfig.model_validate(
        {
            "task": "extract",
            "run_dir": str(tmp_path / "run"),
            "data": {
                "train": str(slots / "train.jsonl"),
                "test": str(slots / "test.jsonl"),
                "max_train": 400,
                "max_test": 80,
            },
            "teacher": {
                "source": "finetune",
                "base": "minilm-l6",
                "train": {"epochs": 8, "lr": 1e-4, "head_lr": 2e-3, "min_steps": 0},
            },
            "students": [{"kind": "tagger", "train": {"epochs": 8}}],
            "evaluate": {"latency_queries": 10, "warmup": 2, "throughput_batches": 2},
            "select": {"quality_floor": "0.5 * teacher"},
            "compress": {},
        }
    )
    result = fit(config, progress=False, log=lambda _: None)
    names = [c.name for c in result.results.candidates]
    student_names = ["minilm-l6-tagger", "minilm-l6-tagger-onnx", "minilm-l6-tagger-int8"]
    assert names == ["teacher", *student_names, "cascade"]
    summary = result.results.cascade
    assert summary is not None and summary.tiers == [result.chosen, "teacher"]
    assert summary.test is not None and 0 <= summary.test.escalation <= 1
    cascade = result.results.candidates[-1]
    assert cascade.quality.fields is not None and cascade.quality.fields.micro_f1 is not None
    # the saved cascade, run on test, does what calibration computed from its tiers' answers
    assert cascade.quality.fields.micro_f1 == pytest.approx(summary.test.accuracy, abs=0.01)
    rows = (tmp_path / "run" / "results" / "cascade.test_answers.jsonl").read_text("utf-8")
    tiers = [json.loads(line)["tier"] for line in rows.splitlines()]
    assert tiers.count("teacher") / len(tiers) == pytest.approx(summary.test.escalation, abs=0.02)
    float32, _, int8 = result.results.candidates[1:4]
    assert int8.backend == "tagger-onnx" and int8.bytes_on_disk < float32.bytes_on_disk / 3
    assert int8.quality.fields is not None and int8.quality.fields.teacher_micro_f1 is not None
    assert int8.quality.fields.teacher_micro_f1 > 0.5
    teacher = result.results.candidates[0]
    assert teacher.quality.fields is not None and teacher.quality.fields.micro_f1 is not None
    assert teacher.quality.fields.teacher_micro_f1 == 1.0
    assert teacher.quality.ci95 is not None and teacher.quality.ci95.field_f1 is not None
    assert result.results.selection is not None
    assert result.results.selection.metric == "field_f1"
    assert "fieldF1%" in result.table and "docEM%" in result.table
    student = result.results.candidates[1]
    assert student.speed.threads["1"].p50_ms > 0 and student.bytes_on_disk > 0
    answers = (tmp_path / "run" / "results" / "minilm-l6-tagger.test_answers.jsonl").read_text()
    assert len(answers.splitlines()) == 80
    assert result.report is not None
    page = result.report.read_text("utf-8")
    assert 'id="per-field"' in page and "micro F1" in page
    again = fit(config, progress=False, log=lambda _: None)
    assert (
        again.stages_run == [] and again.results.selection.chosen == result.results.selection.chosen
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"students": [{"kind": "transformer"}]}, "learns a classify task, but task is extract"),
        (
            {"teacher": {"source": "llm", "probabilities": "samples"}},
            "teacher.probabilities applies to a classify task only",
        ),
        (
            {"teacher": {"source": "llm", "instruction": "{labels}: {text}"}},
            "has a {labels} slot, which the extract task does not fill",
        ),
        ({"route": {"abstain": {}}}, "route.abstain applies to a classify task only"),
        ({"route": {"target": "cost <= 5"}}, "an extract cascade takes an F1 target"),
        (
            {"select": {"metric": "accuracy"}},
            "select.metric accuracy is not a metric of the extract",
        ),
        ({"data": {"train": "x.jsonl", "out_of_scope": "oos"}}, "data.out_of_scope applies to"),
    ],
)
def test_an_extract_config_refuses_what_the_task_does_not_take(extra: dict, message: str) -> None:
    from pydantic import ValidationError

    from smallfit.config import FitConfig

    raw = {"task": "extract", "data": {"train": "x.jsonl"}, **extra}
    with pytest.raises(ValidationError, match=message):
        FitConfig.model_validate(raw)
    plain = FitConfig.model_validate({"task": "extract", "data": {"train": "x.jsonl"}})
    assert [s.kind for s in plain.students] == ["tagger"] and plain.route is not None


def test_the_demo_recognises_an_extract_dataset(slots: Path) -> None:
    from smallfit.demo import demo_config

    config = demo_config(slots, quick=True)
    assert config.task == "extract" and [s.kind for s in config.students] == ["tagger"]
    assert config.compress is not None
    steps = [[s.method for s in c.steps] for c in config.compress.expand()]
    assert steps == [["onnx"], ["onnx", "int8-dynamic"]] and config.route is not None
    assert demo_config(shared_dataset("sst2")).task == "classify"


def test_cascade_calibration_escalates_exactly_what_a_threshold_can() -> None:
    """Per-document counts (tp, fp, fn) of the first tier and the teacher: escalating the k
    least confident gives the mixed micro F1; a k that splits tied confidences is never
    chosen, and the threshold escalates exactly the chosen k."""
    from smallfit.route.fields import _threshold, choose, mixed_curve

    conf = np.array([0.5, 0.5, 0.9, 0.2])
    first = np.array([[0, 1, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=float)
    second = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=float)
    f1, order, exact = mixed_curve(conf, first, second)
    assert exact.tolist() == [True, True, False, True, True]  # k=2 splits the two 0.5s
    assert f1[0] == pytest.approx(2 * 1 / (2 * 1 + 2 + 3))
    assert f1[-1] == 1.0
    k, met = choose(f1, 1.0, "accuracy >= teacher - 0.5pt", exact)
    assert met and k == 3 and exact[k]
    threshold = _threshold(conf, order, k)
    assert int((conf < threshold).sum()) == 3
    k, met = choose(f1, 1.0, "escalation <= 50%", exact)
    assert k == 1 and met  # 2 would split the tie


def test_a_word_takes_the_tag_of_its_first_piece() -> None:
    from smallfit.models.tagger import decode, words

    tags = ["O", "B-city", "I-city"]
    text = "to newyork, ok"
    # "to", "new", "##york" (one word), ",", "ok"
    offsets = [(0, 0), (0, 2), (3, 6), (6, 10), (10, 11), (12, 14), (0, 0)]
    assert words(text, offsets) == [(1, 0, 2), (2, 3, 10), (4, 10, 11), (5, 12, 14)]
    probs = np.array(
        [
            [1, 0, 0],
            [0.9, 0.05, 0.05],
            [0.2, 0.7, 0.1],  # "new": B-city
            [0.6, 0.1, 0.3],  # "##york": O, outvoted by its word's first piece
            [0.95, 0, 0.05],
            [0.99, 0.01, 0],
            [1, 0, 0],
        ]
    )
    got = decode(text, offsets, probs, tags)
    assert got.values == {"city": ["newyork"]} and got.spans == [Span(3, 10, "city")]
    assert got.field_confidence == {"city": pytest.approx(0.7)}
    assert got.confidence == pytest.approx(0.7)


def test_an_f1_target_is_met_from_where_the_dev_curve_stays_above_it() -> None:
    from smallfit.route.fields import choose

    f1 = np.array([0.90, 0.93, 0.91, 0.92, 0.935, 0.94, 0.945])  # k = 0..6 escalated
    k, met = choose(f1, 0.945, "accuracy >= teacher - 2pt")  # 0.925: first met at 1, dips at 2, 3
    assert (k, met) == (4, True)
    k, met = choose(f1, 0.945, "accuracy >= teacher - 5pt")  # met everywhere
    assert (k, met) == (0, True)
    exact = np.array([True, True, True, False, True, True, True])
    k, met = choose(f1, 0.945, "accuracy >= teacher - 2pt", exact)
    assert (k, met) == (4, True)
    k, met = choose(f1, 0.945, "accuracy >= 0.95")  # never met: the best F1, unmet
    assert (k, met) == (6, False)
    # above the teacher's own F1, no k stays above: the fewest that reach it
    k, met = choose(np.array([0.90, 0.93, 0.96, 0.955, 0.94]), 0.94, "accuracy >= 0.95")
    assert (k, met) == (2, True)


def test_a_value_inside_a_word_is_learned_on_the_words_first_piece() -> None:
    from smallfit.fields import FieldSchema
    from smallfit.models.tagger import bio_tags, token_targets, whole_words

    tags = bio_tags(FieldSchema.of(["city"]))
    text = "to newyork"
    offsets = [(0, 0), (0, 2), (3, 6), (6, 10), (0, 0)]
    inside = [Span(6, 10, "city")]  # "york", found inside "newyork"
    assert whole_words(text, inside) == [Span(3, 10, "city")]
    assert token_targets(offsets, whole_words(text, inside), tags)[1:4] == [0, 1, 2]


def test_words_join_overlapping_pieces_and_keep_ideographs_apart() -> None:
    from smallfit.models.tagger import words

    # byte-level pieces of "ü" share its offsets: one word
    assert words("Zürich x", [(0, 2), (1, 2), (2, 6), (7, 8)]) == [(0, 0, 6), (3, 7, 8)]
    # each CJK ideograph is a word, as BERT's pre-tokenizer makes it
    assert words("东京天气", [(0, 1), (1, 2), (2, 3), (3, 4)]) == [
        (0, 0, 1),
        (1, 1, 2),
        (2, 2, 3),
        (3, 3, 4),
    ]
    assert words("R&B", [(0, 1), (1, 2), (2, 3)]) == [(0, 0, 1), (1, 1, 2), (2, 2, 3)]
    from smallfit.models.tagger import whole_words

    assert whole_words("飞往东京", [Span(2, 3, "city")]) == [Span(2, 3, "city")]
    assert whole_words("to newyork", [Span(6, 8, "city")]) == [Span(3, 10, "city")]
