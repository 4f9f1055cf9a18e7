"""The report: written by fit from a real run's saved results, rendered in a real headless
Chromium (Debian's, driven by Playwright) with JavaScript on and off, its numbers checked against
results.json; model cards; clear errors for missing or corrupt results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path
from typing import Any

import pytest

from smallfit.config import (
    DataConfig,
    EvalConfig,
    FitConfig,
    LinearStudent,
    ModelTeacher,
    SelectConfig,
)
from smallfit.errors import SmallfitError
from smallfit.hashing import hash_dir
from smallfit.models.base import MODEL_CARD, dir_bytes
from smallfit.pipeline import fit
from smallfit.report import REPORT, write_report
from smallfit.report.cost import CostOption, break_even

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(snips_slice: Path, snips_minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run: the MiniLM SNIPS classifier as the teacher, a linear student, the cascade
    linear -> teacher (fit writes the report at the end)."""
    config = FitConfig(
        run_dir=tmp_path_factory.mktemp("report") / "run",
        data=DataConfig(train=snips_slice / "train.jsonl", test=snips_slice / "test.jsonl"),
        teacher=ModelTeacher(path=snips_minilm),
        students=[LinearStudent()],
        evaluate=EvalConfig(latency_queries=40, warmup=4, throughput_batches=2, isolate=False),
        select=SelectConfig(quality_floor="0.5 * teacher"),
    )
    result = fit(config, progress=False, log=lambda _: None)
    assert result.report == Path(config.run_dir) / REPORT
    return Path(config.run_dir)


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "results.json").read_text("utf-8"))


def test_fit_writes_the_report_and_a_card_per_model(run: Path) -> None:
    html = (run / REPORT).read_text("utf-8")
    results = _results(run)
    for section in ("verdict", "pareto", "latency", "cascade", "cost", "weaker", "lineage"):
        assert f'id="{section}"' in html, section
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    assert "<img" not in html and "<link" not in html  # self-contained
    chosen = results["selection"]["chosen"]
    assert f'data-chosen="{chosen}"' in html
    for c in results["candidates"]:
        assert all(len(row.get("samples_ms", [])) == 40 for row in c["speed"]["threads"].values())
    for name in ("teacher", "linear", "cascade"):
        card = (run / "models" / name / MODEL_CARD).read_text("utf-8")
        c = next(c for c in results["candidates"] if c["name"] == name)
        assert card.startswith(f"# {name}\n")
        assert f"| accuracy | {100 * c['quality']['accuracy']:.2f}% |" in card
    # a card is documentation: the model's size and content hash do not see it
    model = run / "models" / "linear"
    with_card = hash_dir(model), dir_bytes(model)
    (model / MODEL_CARD).unlink()
    assert (hash_dir(model), dir_bytes(model)) == with_card
    write_report(run)
    assert (model / MODEL_CARD).is_file()


def test_cost_staircase_and_break_even() -> None:
    api = CostOption("api", "api", per_query_usd=1e-4)  # $100 per 1M queries
    own = CostOption("own", "self-hosted", throughput_per_s=100.0, hour_usd=0.5, utilization=0.5)
    per_machine = 100.0 * 3600 * 730 * 0.5
    assert own.machines(1) == 1 and own.machines(per_machine) == 1
    assert own.machines(per_machine + 1) == 2
    assert own.monthly(10) == pytest.approx(0.5 * 730)  # one machine all month
    even = break_even(own, api)
    assert even == pytest.approx(0.5 * 730 / 1e-4, rel=1e-6)  # 3.65M queries a month
    assert own.monthly(even * 1.01) < api.monthly(even * 1.01)
    assert own.monthly(even * 0.99) > api.monthly(even * 0.99)
    never = CostOption("slow", "self-hosted", throughput_per_s=1e-3, hour_usd=10.0)
    assert break_even(never, api) is None
    amortized = CostOption("x", "api", per_query_usd=0.0, one_off_usd=120.0, amortize_months=12)
    assert amortized.monthly(5) == pytest.approx(10.0)


def test_missing_or_corrupt_results_name_the_file_and_write_nothing(run: Path, tmp_path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(run, bad, ignore=shutil.ignore_patterns("models"))
    before = (bad / REPORT).read_text("utf-8")

    results = bad / "results.json"
    good = results.read_text("utf-8")
    results.write_text(good[: len(good) // 2], "utf-8")
    with pytest.raises(SmallfitError, match=r"results\.json: corrupt"):
        write_report(bad)
    assert (bad / REPORT).read_text("utf-8") == before  # the earlier page is untouched

    data = json.loads(good)
    del data["candidates"][1]["quality"]["accuracy"]
    results.write_text(json.dumps(data), "utf-8")
    name = data["candidates"][1]["name"]
    with pytest.raises(
        SmallfitError, match=rf"candidate '{name}': missing field 'quality.accuracy'"
    ):
        write_report(bad)

    data = json.loads(good)
    data["candidates"][1]["quality"]["ci95"]["accuracy"] = [0.9, 0.8]
    results.write_text(json.dumps(data), "utf-8")
    with pytest.raises(SmallfitError, match=r"'quality\.ci95\.accuracy' is \[0\.9, 0\.8\], not a"):
        write_report(bad)

    results.write_text(good, "utf-8")
    np_file = bad / "results" / f"{data['selection']['chosen']}.test_probs.npy"
    np_file.write_bytes(b"not a numpy file")
    with pytest.raises(SmallfitError, match=r"test_probs\.npy: corrupt"):
        write_report(bad)

    results.unlink()
    fresh = tmp_path / "fresh.html"
    out = subprocess.run(
        [sys.executable, "-m", "smallfit.cli", "report", str(bad), "-o", str(fresh)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "results.json: no results file" in out.stderr and not fresh.exists()


def test_results_of_an_older_run_still_render(run: Path, tmp_path) -> None:
    """No latency samples, no per-candidate cost, no saved test split: the page says what is
    missing instead of failing."""
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("models", "test.jsonl"))
    data = _results(old)
    data["selection"].pop("resolution")
    for c in data["candidates"]:
        for key in ("ci95", "vs_teacher", "bootstrap"):
            c["quality"].pop(key)
        c.pop("cost", None)
        for row in c["speed"]["threads"].values():
            row.pop("samples_ms", None)
    (old / "results.json").write_text(json.dumps(data), "utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "smallfit.cli", "report", str(old), "--volume", "5000000"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    html = (old / REPORT).read_text("utf-8")
    assert "percentiles only (no samples)" in html
    assert "test.jsonl is missing" in html
    assert "today (5M)" in html
    assert '<span data-field="metric_ci">no interval</span>' in html
    assert 'id="resolution"' not in html


# -- in a real browser ---------------------------------------------------------------------------


def _browser() -> Any:
    if CHROMIUM is None:
        if os.environ.get("SMALLFIT_SKIP_BROWSER") == "1":
            pytest.skip("chromium is not installed and SMALLFIT_SKIP_BROWSER=1")
        pytest.fail("chromium is not installed: scripts/setup --dev installs it (apt-get)")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _ci(ci: list[float]) -> str:
    return f"{100 * ci[0]:.2f}–{100 * ci[1]:.2f}%"


def _diff(paired: dict[str, Any]) -> str:
    lo, hi = paired["ci95"]
    return f"{100 * paired['diff']:+.2f} pt ({100 * lo:+.2f} to {100 * hi:+.2f})"


@pytest.mark.browser
@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_the_page_in_headless_chromium(run: Path, tmp_path, javascript: bool) -> None:
    results = _results(run)
    with _browser() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(
                java_script_enabled=javascript, viewport={"width": 1200, "height": 900}
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto((run / REPORT).resolve().as_uri())
            page.wait_for_load_state("load")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            assert errors == []

            charts = page.locator("svg.chart")
            assert charts.count() >= 5  # pareto, latency x2, cascade x2, cost
            for i in range(charts.count()):
                box = charts.nth(i).bounding_box()
                assert charts.nth(i).is_visible() and box and box["width"] > 300, i
            assert page.locator("#pareto svg [data-candidate]").count() == len(
                results["candidates"]
            )

            # the numbers on the page are results.json's
            chosen = results["selection"]["chosen"]
            assert page.locator("#verdict [data-field=chosen]").inner_text() == chosen
            mine = next(c for c in results["candidates"] if c["name"] == chosen)["quality"]
            verdict = lambda f: page.locator(f"#verdict [data-field={f}]").inner_text()  # noqa: E731
            assert verdict("metric_ci") == _ci(mine["ci95"]["accuracy"])
            assert verdict("diff") == _diff(mine["vs_teacher"]["accuracy"])
            cascade = next(c for c in results["candidates"] if c["name"] == "cascade")
            assert verdict("cascade_diff") == _diff(cascade["quality"]["vs_teacher"]["accuracy"])
            notes = page.locator("#resolution span").all_inner_texts()
            assert notes == results["selection"]["resolution"]
            for c in results["candidates"]:
                row = page.locator(f'#candidates tr[data-candidate="{c["name"]}"]')
                cell = lambda f, row=row: row.locator(f"td[data-field={f}]").inner_text()  # noqa: E731
                assert cell("accuracy") == _pct(c["quality"]["accuracy"])
                assert cell("macro_f1") == _pct(c["quality"]["macro_f1"])
                assert cell("ci95") == _ci(c["quality"]["ci95"]["accuracy"])
                lo, hi = c["quality"]["ci95"]["accuracy"]
                assert lo <= c["quality"]["accuracy"] <= hi
                paired = (c["quality"]["vs_teacher"] or {}).get("accuracy")
                assert cell("vs_teacher") == ("–" if c["name"] == "teacher" else _diff(paired))
                p50 = c["speed"]["threads"]["1"]["p50_ms"]
                assert cell("p50_1t") == (f"{p50:.3f} ms" if p50 < 10 else f"{p50:.1f} ms")
                size = c["bytes_on_disk"]
                assert cell("bytes_on_disk") == f"{size / 1e6:.1f} MB"
            test = results["cascade"]["test"]
            assert page.locator("#verdict [data-field=cascade_accuracy]").inner_text() == _pct(
                test["accuracy"]
            )
            local = page.locator('#cascade-points tr[data-split="test"] td[data-field=local]')
            assert local.inner_text() == f"{100 * (1 - test['escalation']):.1f}%"
            worst = page.locator("#per-class tbody tr").first
            label = worst.get_attribute("data-label")
            per_class = next(c for c in results["candidates"] if c["name"] == chosen)["quality"][
                "per_class"
            ]
            assert worst.locator("td[data-field=f1]").inner_text() == (
                f"{100 * per_class[label]['f1']:.1f}%"
            )

            if javascript:  # the table sorts on a click; without scripts it keeps its order
                page.locator("#candidates th", has_text="accuracy").click()
                values = [
                    float(v)
                    for v in page.locator("#candidates td[data-field=accuracy]").evaluate_all(
                        "cells => cells.map(c => c.dataset.sort)"
                    )
                ]
                assert values == sorted(values)
        finally:
            browser.close()


def test_a_run_that_chose_nothing_says_why(run: Path, tmp_path) -> None:
    none = tmp_path / "none"
    shutil.copytree(run, none, ignore=shutil.ignore_patterns("models"))
    data = _results(none)
    reason = "no candidate reaches the quality floor: best accuracy 0.5 (linear) < floor 0.99"
    data["selection"] = {**data["selection"], "chosen": None, "reason": reason}
    (none / "results.json").write_text(json.dumps(data), "utf-8")
    html = write_report(none).read_text("utf-8")
    assert f"No model was chosen: {escape(reason)}." in html
    assert 'data-chosen=""' in html and 'id="weaker"' not in html
    assert 'id="cost"' in html and "API LLM (reference)" in html


def test_every_file_of_the_run_reads_back_as_the_records_it_was_written_from(run: Path) -> None:
    """Each JSON file of a real run validates as its record, and the record written again is
    the same file, byte for byte (key order, ints and floats, absent keys)."""
    from smallfit.run.records import (
        CandidateResult,
        CascadeSummary,
        DataSummary,
        LabelsSummary,
        RunResults,
    )
    from smallfit.run.store import Run, validate

    store = Run(run)
    files = [
        (store.dir.results_file, RunResults),
        (store.dir.cascade_file, CascadeSummary),
        (store.dir.data_file, DataSummary),
        *((f, CandidateResult) for f in sorted(store.dir.results_dir.glob("*.json"))),
    ]
    assert len(files) >= 6  # results, cascade, data, teacher, linear, cascade candidate
    for file, kind in files:
        raw = json.loads(file.read_text("utf-8"))
        assert json.dumps(validate(file, raw, kind).dump()) == json.dumps(raw), file
    assert not store.dir.labels_summary.exists() or LabelsSummary.model_validate(
        json.loads(store.dir.labels_summary.read_text("utf-8"))
    )
    results = store.read_results()
    assert results.candidate("linear") is not None and results.cascade is not None
    assert results.selection is not None and results.selection.chosen in results.names
    assert set(store.read_stages() or {}) >= {"teacher", "student:linear", "route"}
    assert store.read_test_probs("linear").shape == (  # type: ignore[union-attr]
        results.candidate("linear").quality.n,  # type: ignore[union-attr]
        len(store.model_labels("linear") or []),
    )
