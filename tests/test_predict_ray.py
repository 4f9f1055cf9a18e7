"""``smallfit predict --engine ray`` on a local Ray cluster: the local path's output row for row,
a killed worker costing nothing, a bad row named, an unreachable cluster refused in one line."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import run_cli

from smallfit.errors import DataError
from smallfit.predict import load_answerer, predict_file

ray = pytest.importorskip("ray")  # .ci/run installs it (the dev extra): never skipped there

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(snips_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = (snips_slice / "test.jsonl").read_text("utf-8").splitlines()
    out = tmp_path_factory.mktemp("ray-in") / "in.jsonl"
    rows = [{"id": i, "text": json.loads(line)["text"]} for i, line in enumerate(lines)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return out


def test_ray_writes_the_local_paths_file_row_for_row(
    local_ray: str, snips_linear: Path, source: Path, tmp_path: Path
) -> None:
    from smallfit.predict.ray_engine import ray_engine

    answerer = load_answerer(snips_linear)
    predict_file(answerer, source, tmp_path / "local.jsonl", batch_size=10)
    with ray_engine(answerer.path, workers=2) as spread:
        summary = predict_file(
            answerer, source, tmp_path / "ray.jsonl", batch_size=10, engine=spread
        )
    assert summary.written == len(source.read_text().splitlines())
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_a_worker_killed_mid_job_loses_and_repeats_no_row(
    local_ray: str, snips_linear: Path, source: Path, tmp_path: Path
) -> None:
    from smallfit.predict.ray_engine import ray_engine

    answerer = load_answerer(snips_linear)
    predict_file(answerer, source, tmp_path / "local.jsonl", batch_size=7)
    with ray_engine(answerer.path, workers=2) as spread:
        victim = ray.get(spread.workers[0].pid.remote())  # type: ignore[attr-defined]

        def killing(batches: Iterator) -> Iterator:
            for i, batch in enumerate(batches):
                if i == 4:  # batches 0..3 sent, some answered: the worker dies under load
                    os.kill(victim, signal.SIGKILL)
                yield batch

        predict_file(
            answerer,
            source,
            tmp_path / "ray.jsonl",
            batch_size=7,
            engine=lambda batches: spread(killing(batches)),
        )
        assert ray.get(spread.workers[0].pid.remote()) != victim  # restarted
    rows = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, len(rows) + 1))
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_a_bad_row_through_ray_keeps_every_row_before_it(
    local_ray: str, snips_linear: Path, source: Path, tmp_path: Path
) -> None:
    from smallfit.predict.ray_engine import ray_engine

    lines = source.read_text("utf-8").splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines[:45]) + '{"id": 45, "text": "   "}\n' + "".join(lines[46:]))
    answerer = load_answerer(snips_linear)
    out = tmp_path / "out.jsonl"
    whitespace = r"bad\.jsonl:46 field 'text': text is only whitespace"
    with ray_engine(answerer.path, workers=2) as spread, pytest.raises(DataError, match=whitespace):
        predict_file(answerer, bad, out, batch_size=10, engine=spread)
    assert [json.loads(x)["line"] for x in out.read_text().splitlines()] == list(range(1, 46))


def test_an_unreachable_cluster_is_one_line_and_exit_2(
    snips_linear: Path, source: Path, tmp_path: Path
) -> None:
    done = run_cli(
        "predict",
        str(snips_linear),
        str(source),
        "-o",
        str(tmp_path / "o.jsonl"),
        "--engine",
        "ray",
        "--ray-address",
        "127.0.0.1:9",
    )
    assert done.returncode == 2, done.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o.jsonl").exists()
