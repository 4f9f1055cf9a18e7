"""Reading, validating and splitting datasets (smallfit.data)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallfit.config import DataConfig
from smallfit.data import NO_GOLD, Dataset, Split, load_dataset, read_split
from smallfit.errors import DataError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data from the repo

ROWS = [
    {"text": "hello there", "label": "greet"},
    {"text": "bye now", "label": "leave"},
    {"text": 'a "quoted", comma', "label": "greet"},
    {"text": "line one\nline two", "label": "leave"},
    {"text": "naïve café ☕", "label": "greet"},
]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, columns: dict[str, list[object]]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def raises(path: Path, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        read_split(path, **kwargs)  # type: ignore[arg-type]
    return info.value


def labelled(n_per_label: dict[str, int], *, prefix: str = "") -> list[dict[str, str]]:
    return [
        {"text": f"{prefix}{label} example {i}", "label": label}
        for label, n in n_per_label.items()
        for i in range(n)
    ]


# --- reading ------------------------------------------------------------------------------------


def test_jsonl_csv_parquet_read_the_same(tmp_path: Path) -> None:
    as_jsonl = read_split(write_jsonl(tmp_path / "d.jsonl", ROWS))
    as_csv = read_split(write_csv(tmp_path / "d.csv", ROWS))
    columns = {"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}
    as_parquet = read_split(write_parquet(tmp_path / "d.parquet", columns))
    for split in (as_jsonl, as_csv, as_parquet):
        assert split.texts == [r["text"] for r in ROWS]
        assert split.labels == ["greet", "leave", "greet", "leave", "greet"]
        assert len(split) == 5
    assert as_jsonl.lines == [1, 2, 3, 4, 5]
    # the CSV header is line 1 and the quoted newline makes record 4 span lines 5-6
    assert as_csv.lines == [2, 3, 4, 5, 7]
    assert as_parquet.lines == [1, 2, 3, 4, 5]
    assert as_csv.source == str(tmp_path / "d.csv")


def test_explicit_format_overrides_suffix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.txt", ROWS)
    assert read_split(path, format="jsonl").labels[:2] == ["greet", "leave"]
    err = raises(path)
    assert err.file == str(path) and "'.txt'" in err.message


def test_custom_field_names_and_extra_fields(tmp_path: Path) -> None:
    rows = [{"sentence": "good film", "y": 1, "id": 7}, {"sentence": "bad film", "y": 0, "id": 8}]
    split = read_split(
        write_jsonl(tmp_path / "d.jsonl", rows), text_field="sentence", label_field="y"
    )
    assert split.texts == ["good film", "bad film"]
    assert split.labels == ["1", "0"]
    csv_split = read_split(
        write_csv(tmp_path / "d.csv", rows), text_field="sentence", label_field="y"
    )
    assert csv_split.labels == ["1", "0"]


def test_int_and_bool_labels_become_strings(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 3}, {"text": "b", "label": True}, {"text": "c", "label": "x"}]
    assert read_split(write_jsonl(tmp_path / "d.jsonl", rows)).labels == ["3", "true", "x"]
    path = write_parquet(tmp_path / "d.parquet", {"text": ["a", "b"], "label": [0, 5]})
    assert read_split(path).labels == ["0", "5"]


def test_blank_lines_and_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    body = '\ufeff{"text": "a", "label": "x"}\r\n\r\n   \n{"text": "b", "label": "y"}\r\n'
    path.write_bytes(body.encode("utf-8"))
    split = read_split(path)
    assert split.texts == ["a", "b"]
    assert split.lines == [1, 4]


# --- bad input ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    err = raises(tmp_path / "nope.jsonl")
    assert err.file == str(tmp_path / "nope.jsonl")
    assert "no such file" in err.message


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("x", encoding="utf-8")
    err = raises(path)
    assert err.file == str(path)
    assert "'.xlsx'" in err.message and ".jsonl" in err.message


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n', encoding="utf-8")
    err = raises(path)
    assert (err.file, err.line, err.field) == (str(path), 3, None)
    assert "invalid JSON" in err.message
    assert str(err).startswith(f"{path}:3: ")


def test_json_array_file_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS, indent=1), encoding="utf-8")
    err = raises(path)
    assert err.line == 1 and "not a JSON array" in err.message


def test_json_value_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, ["b", "y"]])
    err = raises(path)
    assert (err.line, err.field) == (2, None)
    assert "expected a JSON object, found a list" in err.message


@pytest.mark.parametrize("missing", ["text", "label"])
def test_missing_field_lists_the_fields_present(tmp_path: Path, missing: str) -> None:
    bad = {"text": "b", "label": "y", "extra": 1}
    del bad[missing]
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, bad])
    err = raises(path)
    assert (err.file, err.line, err.field) == (str(path), 2, missing)
    assert f"missing field '{missing}'" in err.message
    assert "'extra'" in err.message


def test_custom_field_missing_names_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}])
    err = raises(path, text_field="sentence")
    assert (err.line, err.field) == (1, "sentence")
    assert "'text'" in err.message and "'label'" in err.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty text"), ("   \t", "only whitespace"), (42, "an integer (42)"), (None, "null")],
)
def test_bad_text(tmp_path: Path, text: object, fragment: str) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"text": "ok", "label": "x"}, {"text": text, "label": "y"}]
    )
    err = raises(path)
    assert (err.line, err.field) == (2, "text")
    assert fragment in err.message


@pytest.mark.parametrize(
    ("label", "fragment"),
    [
        (None, "label is null"),
        ("", "empty label"),
        ("  ", "empty label"),
        (1.5, "a float (1.5)"),
        (["a"], "a list"),
        ({"a": 1}, "an object"),
    ],
)
def test_bad_label(tmp_path: Path, label: object, fragment: str) -> None:
    rows = [
        {"text": "ok", "label": "x"},
        {"text": "fine", "label": "y"},
        {"text": "t", "label": label},
    ]
    err = raises(write_jsonl(tmp_path / "d.jsonl", rows))
    assert (err.line, err.field) == (3, "label")
    assert fragment in err.message


def test_not_utf8_names_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    first = b'{"text": "a", "label": "x"}\n'
    path.write_bytes(first + b'{"text": "caf\xe9", "label": "y"}\n')
    err = raises(path)
    assert (err.file, err.line) == (str(path), 2)
    assert "UTF-8" in err.message
    assert f"byte offset {len(first) + 13}" in err.message


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("body", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, suffix: str, body: str) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_text(body, encoding="utf-8")
    err = raises(path)
    assert err.file == str(path) and "empty file" in err.message


def test_csv_header_only_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\n", encoding="utf-8")
    assert "no examples" in raises(path).message


def test_csv_missing_column_names_the_header(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nhi,x\n", encoding="utf-8")
    err = raises(path)
    assert (err.line, err.field) == (1, "text")
    assert "'sentence'" in err.message


def test_csv_row_errors_use_file_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"multi\nline",x\nok,y\n  ,z\n', encoding="utf-8")
    err = raises(path)
    assert (err.line, err.field) == (5, "text")
    assert "whitespace" in err.message

    path.write_text("text,label\nok,x\nshort\n", encoding="utf-8")
    err = raises(path)
    assert (err.line, err.field) == (3, None)
    assert "1 column(s)" in err.message

    path.write_text("text,label\nok,x\nfine,\n", encoding="utf-8")
    err = raises(path)
    assert (err.line, err.field) == (3, "label")


def test_parquet_errors_say_row(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "d.parquet", {"text": ["a", "b", None], "label": ["x", "y", "z"]}
    )
    err = raises(path)
    assert (err.file, err.line, err.field) == (str(path), 3, "text")
    assert "row 3" in err.message and "null" in err.message

    path = write_parquet(tmp_path / "f.parquet", {"text": ["a", "b"], "label": [1.0, 2.0]})
    err = raises(path)
    assert (err.line, err.field) == (1, "label") and "a float" in err.message

    path = write_parquet(tmp_path / "m.parquet", {"text": ["a"], "target": ["x"]})
    err = raises(path)
    assert err.field == "label" and "'target'" in err.message


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_text("text,label\n", encoding="utf-8")
    err = raises(path)
    assert err.file == str(path) and "Parquet" in err.message


# --- load_dataset -------------------------------------------------------------------------------


def test_unseen_test_label_is_located(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", labelled({"a": 5, "b": 5}))
    test_rows = [
        {"text": "t1", "label": "a"},
        {"text": "t2", "label": "c"},
        {"text": "t3", "label": "c"},
    ]
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(train=train, test=test))
    err = info.value
    assert (err.file, err.line, err.field) == (str(test), 2, "label")
    assert "'c'" in err.message and "train" in err.message


def test_train_needs_two_labels(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", labelled({"only": 6}))
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(train=train))
    assert (info.value.file, info.value.field) == (str(train), "label")
    assert "only 1 distinct label ('only')" in info.value.message


def make_train(tmp_path: Path) -> Path:
    # 200 + 100 + 50 + 9 + 2 + 1 examples: unbalanced, with a two- and a one-example class
    counts = {"big": 200, "mid": 100, "small": 50, "tiny": 9, "pair": 2, "solo": 1}
    return write_jsonl(tmp_path / "train.jsonl", labelled(counts))


def test_dev_carve_is_stratified_and_seeded(tmp_path: Path) -> None:
    train_path = make_train(tmp_path)
    test = write_jsonl(tmp_path / "test.jsonl", labelled({"big": 3, "solo": 1}, prefix="t "))
    config = DataConfig(train=train_path, test=test, dev_fraction=0.2, seed=3)
    data = load_dataset(config)
    assert isinstance(data, Dataset)
    assert len(data.dev) == round(362 * 0.2)
    assert len(data.train) + len(data.dev) == 362
    assert set(data.train.texts).isdisjoint(data.dev.texts)
    assert data.labels == ["big", "mid", "pair", "small", "solo", "tiny"]
    assert set(data.train.labels) == set(data.labels)  # no class lost from train
    train, dev = Counter(data.train.labels), Counter(data.dev.labels)
    assert train["solo"] == 1 and dev["solo"] == 0
    assert train["pair"] >= 1
    assert dev["big"] == 40 and dev["mid"] == 20 and dev["small"] == 10
    assert 1 <= dev["tiny"] <= 2
    assert data.dev.source == f"{train_path} (dev)"
    assert len(data.test) == 4 and data.test.source == str(test)

    again = load_dataset(config)
    assert again == data
    other = load_dataset(config.model_copy(update={"seed": 4}))
    assert other.dev.texts != data.dev.texts
    assert Counter(other.dev.labels)["big"] == 40


def test_held_out_test_when_no_test_file(tmp_path: Path) -> None:
    train_path = make_train(tmp_path)
    data = load_dataset(DataConfig(train=train_path, test_fraction=0.25, dev_fraction=0.1))
    assert len(data.test) == round(362 * 0.25)
    assert len(data.dev) == round((362 - len(data.test)) * 0.1)
    assert len(data.train) + len(data.dev) + len(data.test) == 362
    texts = [set(s.texts) for s in (data.train, data.dev, data.test)]
    assert texts[0].isdisjoint(texts[1]) and texts[0].isdisjoint(texts[2])
    assert texts[1].isdisjoint(texts[2])
    assert Counter(data.test.labels)["big"] == 50
    assert "solo" in data.train.labels and "solo" not in data.test.labels
    assert data.test.source == f"{train_path} (test)"
    # the held-out test set does not move when max_train changes
    sliced = load_dataset(DataConfig(train=train_path, test_fraction=0.25, max_train=100))
    assert sliced.test == data.test


def test_max_train_and_max_test(tmp_path: Path) -> None:
    train_path = make_train(tmp_path)
    test_path = write_jsonl(
        tmp_path / "test.jsonl", labelled({"big": 60, "mid": 30, "tiny": 8, "solo": 2}, prefix="t ")
    )
    config = DataConfig(train=train_path, test=test_path, max_train=60, max_test=20, seed=1)
    data = load_dataset(config)
    assert len(data.train) + len(data.dev) == 60
    assert len(data.dev) == 6
    assert set(data.train.labels) == {"big", "mid", "small", "tiny", "pair", "solo"}
    assert len(data.test) == 20
    test = Counter(data.test.labels)
    assert set(test) == {"big", "mid", "tiny", "solo"}  # every class kept
    assert test["big"] > test["mid"] > test["tiny"]
    assert load_dataset(config) == data
    assert set(data.test.texts) <= set(read_split(test_path).texts)
    # bigger than the file: everything
    whole = load_dataset(config.model_copy(update={"max_train": 10_000, "max_test": 10_000}))
    assert len(whole.train) + len(whole.dev) == 362 and len(whole.test) == 100


def test_max_train_below_label_count(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(train=make_train(tmp_path), max_train=4))
    assert "max_train=4" in info.value.message and "(6)" in info.value.message


def test_custom_fields_through_load_dataset(tmp_path: Path) -> None:
    rows = [{"q": f"text {i}", "intent": i % 3} for i in range(30)]
    train = write_csv(tmp_path / "train.csv", rows)
    data = load_dataset(DataConfig(train=train, text_field="q", label_field="intent"))
    assert data.labels == ["0", "1", "2"]
    assert len(data.train) + len(data.dev) + len(data.test) == 30


def test_split_lines_follow_the_examples(tmp_path: Path) -> None:
    train_path = make_train(tmp_path)
    data = load_dataset(DataConfig(train=train_path))
    source = read_split(train_path)
    for split in (data.train, data.dev, data.test):
        for text, line in zip(split.texts, split.lines, strict=True):
            assert source.texts[line - 1] == text


# --- real data ----------------------------------------------------------------------------------

needs_data = pytest.mark.skipif(not (DATA / "banking77").is_dir(), reason="shared data missing")


@needs_data
def test_banking77() -> None:
    folder = DATA / "banking77"
    data = load_dataset(DataConfig(train=folder / "train.jsonl", test=folder / "test.jsonl"))
    assert len(data.labels) == 77
    assert len(data.test) == 3080
    assert len(data.train) + len(data.dev) == 10003
    assert len(data.dev) == 1000
    assert set(data.dev.labels) == set(data.labels) == set(data.train.labels)
    assert "card_arrival" in data.labels
    assert isinstance(data.train, Split)


@needs_data
def test_sms_spam_held_out_and_given_test() -> None:
    folder = DATA / "sms_spam"
    data = load_dataset(DataConfig(train=folder / "train.jsonl", test=folder / "test.jsonl"))
    assert data.labels == ["ham", "spam"]
    assert len(data.test) == 1113
    assert len(data.train) + len(data.dev) == 4461
    share = Counter(data.dev.labels)["spam"] / len(data.dev)
    full = Counter(data.train.labels + data.dev.labels)["spam"] / 4461
    assert abs(share - full) < 0.01


def test_read_split_without_a_label_field(tmp_path: Path) -> None:
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text('{"text": "where is my card"}\n{"text": "refund please", "x": 1}\n')
    split = read_split(jsonl, label_field=None)
    assert split.texts == ["where is my card", "refund please"] and split.labels == ["", ""]
    csv_file = tmp_path / "pool.csv"
    csv_file.write_text("id,text\n1,hello there\n")
    assert read_split(csv_file, label_field=None).texts == ["hello there"]
    with pytest.raises(DataError, match="empty text"):
        jsonl.write_text('{"text": ""}\n')
        read_split(jsonl, label_field=None)


# -- gold labels are optional when the teacher labels the pool ---------------------------------

POOL = [
    {"text": f"text number {i}", **({"label": "ab"[i % 2]} if i % 3 == 0 else {})}
    for i in range(60)
]


def test_optional_labels_read_missing_null_and_empty_as_no_gold(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": "x"}, {"text": "b"}, {"text": "c", "label": None}]
    rows.append({"text": "d", "label": ""})
    jsonl = read_split(write_jsonl(tmp_path / "p.jsonl", rows), optional_labels=True)
    assert jsonl.labels == ["x", NO_GOLD, NO_GOLD, NO_GOLD]
    assert jsonl.n_gold == 1 and jsonl.gold.tolist() == [True, False, False, False]
    flat = [{"text": r["text"], "label": r.get("label") or ""} for r in rows]
    assert read_split(write_csv(tmp_path / "p.csv", flat), optional_labels=True).labels == (
        jsonl.labels
    )
    # a CSV or Parquet file without the column at all: no gold anywhere
    texts_only = write_csv(tmp_path / "t.csv", [{"text": r["text"]} for r in rows])
    assert read_split(texts_only, optional_labels=True).labels == [NO_GOLD] * 4
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "t.parquet")
    assert read_split(tmp_path / "t.parquet", optional_labels=True).labels == [NO_GOLD] * 2
    # a label of the wrong type is still an error, gold optional or not
    with pytest.raises(DataError, match=r"p2.jsonl:1 field 'label': label must be a string"):
        read_split(
            write_jsonl(tmp_path / "p2.jsonl", [{"text": "a", "label": 1.5}]), optional_labels=True
        )


def test_a_pool_without_gold_is_carved_at_random_and_needs_a_label_set(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"text": r["text"]} for r in POOL])
    config = DataConfig(train=pool, dev_fraction=0.2, test_fraction=0.25)
    with pytest.raises(DataError) as info:
        load_dataset(config, gold_required=None)
    assert str(info.value).startswith(f"{pool} field 'label': no row of train has a gold label")
    assert "data.labels: [...]" in str(info.value)
    labelled = config.model_copy(update={"labels": ["b", "a"]})
    data = load_dataset(labelled, gold_required=None)
    assert data.labels == ["a", "b"]
    assert (len(data.train), len(data.dev), len(data.test)) == (36, 9, 15)
    assert {y for s in (data.train, data.dev, data.test) for y in s.labels} == {NO_GOLD}
    assert load_dataset(labelled, gold_required=None) == data  # seeded
    # by default (a teacher that trains on gold) the first row without one is named
    with pytest.raises(DataError, match=r"pool.jsonl:1 field 'label': missing field 'label'"):
        load_dataset(labelled)


def test_partly_gold_pools_keep_gold_where_given(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", POOL)
    config = DataConfig(train=pool, test=pool, dev_fraction=0.25)
    data = load_dataset(config, gold_required=None)
    assert data.labels == ["a", "b"]
    assert data.train.n_gold + data.dev.n_gold == 20 and data.dev.n_gold == 5  # stratified
    for split in (data.train, data.dev, data.test):
        for line, label in zip(split.lines, split.labels, strict=True):
            assert label == POOL[line - 1].get("label", NO_GOLD)
    # a gold label outside data.labels is located
    with pytest.raises(DataError, match=r"pool.jsonl:4 field 'label': label 'b' is not one of"):
        load_dataset(config.model_copy(update={"labels": ["a", "c"]}), gold_required=None)
    # holding labels out needs gold on every row
    with pytest.raises(DataError, match="hold_out_labels needs a gold label on every row"):
        load_dataset(config.model_copy(update={"hold_out_labels": 1}), gold_required=None)


def test_the_teacher_decides_whether_gold_is_required(tmp_path: Path) -> None:
    from smallfit.config import FitConfig
    from smallfit.teach import fit_dataset

    pool = write_jsonl(tmp_path / "pool.jsonl", POOL)
    data = {"train": str(pool), "labels": ["a", "b"]}
    with pytest.raises(DataError) as info:
        fit_dataset(FitConfig.model_validate({"data": data}))  # the finetune stand-in
    message = str(info.value)
    assert message.startswith(f"{pool}:2 field 'label': missing field 'label'")
    assert "teacher.source is finetune, so every row needs a gold label" in message
    students = [{"kind": "linear", "use_gold": True}]
    llm = {"source": "llm", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    with pytest.raises(DataError, match="students: linear has use_gold"):
        fit_dataset(FitConfig.model_validate({"data": data, "teacher": llm, "students": students}))
    dataset = fit_dataset(FitConfig.model_validate({"data": data, "teacher": llm}))
    assert dataset.train.n_gold < len(dataset.train)


def test_data_labels_are_checked() -> None:
    from pydantic import ValidationError

    for bad, fragment in (
        (["a"], "at least 2"),
        (["a", "a", "b"], "repeats"),
        (["a", " "], "empty"),
    ):
        with pytest.raises(ValidationError, match=fragment):
            DataConfig(train=Path("x.jsonl"), labels=bad)


def test_extra_train_joins_the_pool_only(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", POOL)
    escalations = write_jsonl(
        tmp_path / "esc.jsonl",
        [
            {"text": "a new unsure query", "label": "b", "tier": "teacher"},
            {"text": POOL[0]["text"].upper(), "label": "a"},  # already in a split: left out
            {"text": "A new unsure query!"},  # the same text, once normalised
        ],
    )
    config = DataConfig(train=pool, test=pool, labels=["a", "b"], extra_train=[escalations])
    data = load_dataset(config, gold_required=None)
    plain = load_dataset(config.model_copy(update={"extra_train": []}), gold_required=None)
    assert data.train.texts == [*plain.train.texts, "a new unsure query"]
    assert data.train.labels[-1] == NO_GOLD  # the logged label is the big model's, not gold
    assert (data.dev, data.test) == (plain.dev, plain.test)
    gold = write_jsonl(tmp_path / "gold.jsonl", ROWS * 4)
    needs_gold = config.model_copy(update={"train": gold, "test": gold, "labels": None})
    with pytest.raises(DataError, match=r"data\.extra_train is for a teacher to label, but x"):
        load_dataset(needs_gold, gold_required="x")
