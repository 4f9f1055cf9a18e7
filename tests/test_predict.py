"""``smallfit predict``: a model or a cascade over a JSONL, CSV or Parquet file, streamed, resumed
after a crash or a bad row without writing a row twice."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import run_cli

from smallfit.data.stream import stream_rows
from smallfit.errors import DataError, SmallfitError
from smallfit.models import load
from smallfit.predict import load_answerer, predict_file
from smallfit.route.cascade import Cascade, Tier


@pytest.fixture(scope="module")
def inputs(snips_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The SNIPS test slice with ids, as JSONL, CSV and Parquet."""
    rows = [json.loads(line) for line in (snips_slice / "test.jsonl").read_text().splitlines()]
    rows = [{"id": f"q{i}", "text": r["text"]} for i, r in enumerate(rows)]
    root = tmp_path_factory.mktemp("predict-inputs")
    (root / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    import csv

    with open(root / "in.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), root / "in.parquet")
    return {"jsonl": root / "in.jsonl", "csv": root / "in.csv", "parquet": root / "in.parquet"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_every_row_is_answered_with_its_line_id_label_and_tier(
    snips_linear: Path, snips_minilm: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    linear, minilm = load(snips_linear), load(snips_minilm)
    cascade = Cascade(
        [
            Tier(model=linear, threshold=0.6, path=snips_linear),
            Tier(model=minilm, threshold=None, path=snips_minilm),
        ]
    )
    cascade_dir = cascade.save(tmp_path / "cascade")
    texts = [r.text for r in stream_rows(inputs["jsonl"])]
    out = tmp_path / "out.jsonl"
    done = run_cli("predict", str(cascade_dir), str(inputs["jsonl"]), "-o", str(out), "-q")
    assert done.returncode == 0, done.stderr
    assert f"wrote {len(texts)} rows" in done.stdout
    rows = _rows(out)
    offline = load(cascade_dir).decide(texts)
    assert [r["line"] for r in rows] == list(range(1, len(texts) + 1))
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(len(texts))]
    assert [r["label"] for r in rows] == [cascade.labels[i] for i in offline.probs.argmax(1)]
    names = [cascade.tiers[t].model.name for t in offline.tier]
    assert [r["tier"] for r in rows] == names
    assert {"linear", "s"} == set(names), "the slice should exercise both tiers"
    assert all(
        len(r["probs"]) == 3 and r["confidence"] >= 0.6 for r in rows if r["tier"] == "linear"
    )


def test_csv_and_parquet_give_the_rows_jsonl_gives(
    snips_linear: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    answerer = load_answerer(snips_linear)
    got = {}
    for kind, source in inputs.items():
        predict_file(answerer, source, tmp_path / f"{kind}.jsonl", batch_size=50)
        got[kind] = [
            {k: v for k, v in r.items() if k != "line"} for r in _rows(tmp_path / f"{kind}.jsonl")
        ]
    assert got["csv"] == got["jsonl"] == got["parquet"]
    assert _rows(tmp_path / "csv.jsonl")[0]["line"] == 2  # the header is line 1


def test_a_rerun_after_a_crash_continues_and_never_writes_a_row_twice(
    snips_linear: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    answerer = load_answerer(snips_linear)
    full = tmp_path / "full.jsonl"
    predict_file(answerer, inputs["jsonl"], full, batch_size=8)
    out = tmp_path / "out.jsonl"
    predict_file(answerer, inputs["jsonl"], out, batch_size=8)
    # the kill: 20 complete rows, then a row cut off mid-write
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:20]) + lines[20][:17])
    summary = predict_file(answerer, inputs["jsonl"], out, batch_size=8)
    assert (summary.resumed, summary.written) == (20, len(lines) - 20)
    assert out.read_bytes() == full.read_bytes()
    again = predict_file(answerer, inputs["jsonl"], out, batch_size=8)
    assert (again.resumed, again.written) == (len(lines), 0)
    assert out.read_bytes() == full.read_bytes()


def test_a_bad_row_is_named_and_the_rows_before_it_are_kept(
    snips_linear: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    answerer = load_answerer(snips_linear)
    good = inputs["jsonl"].read_text("utf-8").splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(good[:30]) + '{"id": "x", "text": ""}\n' + "".join(good[30:]))
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=r"bad\.jsonl:31 field 'text': empty text"):
        predict_file(answerer, bad, out, batch_size=8)
    assert [r["line"] for r in _rows(out)] == list(range(1, 31))
    # the row fixed in place, the same command goes on from line 31
    bad.write_text(
        "".join(good[:30]) + '{"id": "x", "text": "play some jazz"}\n' + "".join(good[30:])
    )
    summary = predict_file(answerer, bad, out, batch_size=8)
    assert (summary.resumed, summary.written) == (30, len(good) - 29)
    assert [r["line"] for r in _rows(out)] == list(range(1, len(good) + 2))


def test_the_reader_streams_rows_before_a_later_bad_one(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "first"}\n\n{"text": "second", "id": 7}\nnot json\n')
    rows = stream_rows(source)
    assert next(rows).text == "first"
    second = next(rows)
    assert (second.line, second.id, second.text) == (3, 7, "second")
    with pytest.raises(DataError, match=r"in\.jsonl:4: invalid JSON"):
        next(rows)
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("id,body\n1,hello\n")
    with pytest.raises(DataError, match=r"in\.csv:1 field 'text': missing column 'text'"):
        list(stream_rows(csv_file))
    assert [r.text for r in stream_rows(csv_file, text_field="body")] == ["hello"]


def test_an_output_from_another_model_or_tool_is_refused_not_mixed(
    snips_linear: Path, snips_minilm: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    predict_file(load_answerer(snips_linear), inputs["jsonl"], out)
    before = out.read_bytes()
    with pytest.raises(SmallfitError, match=r"written with model .*pass --overwrite"):
        predict_file(load_answerer(snips_minilm), inputs["jsonl"], out)
    assert out.read_bytes() == before
    summary = predict_file(load_answerer(snips_minilm), inputs["jsonl"], out, overwrite=True)
    assert summary.resumed == 0 and {r["tier"] for r in _rows(out)} == {"s"}
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"mine": 1}\n')
    with pytest.raises(SmallfitError, match="not written by smallfit predict"):
        predict_file(load_answerer(snips_linear), inputs["jsonl"], foreign)
    assert foreign.read_text() == '{"mine": 1}\n'


def test_the_command_names_a_path_that_holds_no_model(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    done = run_cli("predict", str(tmp_path), str(inputs["jsonl"]), "-o", str(tmp_path / "o.jsonl"))
    assert done.returncode == 2
    assert "neither a model directory" in done.stderr and "Traceback" not in done.stderr
