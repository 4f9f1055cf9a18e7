from __future__ import annotations

import json
from typing import Any

import pytest

from smallfit.config import SelectConfig
from smallfit.errors import SmallfitError
from smallfit.select import Selection, format_table, pareto_front, select, selection_json


def cand(name: str, acc: float, p50: float, size: int, *, params: int = 1000) -> dict[str, Any]:
    return {
        "name": name,
        "backend": "linear" if name.startswith("lin") else "transformer",
        "model_dir": f"/runs/x/models/{name}",
        "parameters": params,
        "bytes_on_disk": size,
        "lineage": {},
        "quality": {"accuracy": acc, "macro_f1": acc - 0.01, "teacher_agreement": acc, "ece": 0.05},
        "speed": {
            "threads": {
                "1": {
                    "p50_ms": p50,
                    "p95_ms": p50 * 1.5,
                    "p99_ms": p50 * 2,
                    "mean_ms": p50,
                    "n": 20,
                },
                "4": {"p50_ms": p50 / 2, "p95_ms": p50, "p99_ms": p50, "mean_ms": p50, "n": 20},
            },
            "throughput_b32_per_s": 1000.0 / p50,
            "throughput_batch": 32,
            "peak_rss_bytes": 200_000_000,
            "load_rss_bytes": 150_000_000,
            "cpu_threads_all": 4,
            "isolated": True,
        },
    }


@pytest.fixture
def pool() -> list[dict[str, Any]]:
    return [
        cand("teacher", 0.93, 40.0, 400_000_000, params=110_000_000),
        cand("minilm", 0.92, 5.0, 90_000_000, params=22_000_000),
        cand("linear", 0.90, 0.5, 10_000_000),
        cand("bad", 0.80, 50.0, 500_000_000),  # dominated by everything
    ]


def test_pareto_front(pool: list[dict[str, Any]]) -> None:
    assert pareto_front(pool) == ["teacher", "minilm", "linear"]
    # an exact duplicate does not dominate its twin
    twin = cand("twin", 0.90, 0.5, 10_000_000)
    assert pareto_front([*pool, twin]) == ["teacher", "minilm", "linear", "twin"]


def test_relative_floor_picks_smallest(pool: list[dict[str, Any]]) -> None:
    sel = select(pool, SelectConfig(quality_floor="0.98 * teacher"))
    assert sel.floor == pytest.approx(0.98 * 0.93)
    assert sel.chosen == "minilm"  # linear 0.90 < 0.9114
    assert sel.eligible == ["teacher", "minilm"]
    assert "minilm" in sel.reason


def test_absolute_floor(pool: list[dict[str, Any]]) -> None:
    sel = select(pool, SelectConfig(quality_floor="0.9"))
    assert (sel.chosen, sel.floor) == ("linear", 0.9)


def test_ceiling_excludes_slow(pool: list[dict[str, Any]]) -> None:
    sel = select(pool, SelectConfig(quality_floor="0.92", latency_ceiling_ms=10))
    assert sel.chosen == "minilm"
    sel = select(pool, SelectConfig(quality_floor="0.93", latency_ceiling_ms=10))
    assert sel.chosen is None
    assert "ceiling" in sel.reason and "teacher" in sel.reason


def test_nothing_eligible(pool: list[dict[str, Any]]) -> None:
    sel = select(pool, SelectConfig(quality_floor="0.99"))
    assert sel.chosen is None and sel.eligible == []
    assert "0.9300" in sel.reason and "teacher" in sel.reason and "0.9900" in sel.reason


def test_teacher_only_eligible(pool: list[dict[str, Any]]) -> None:
    sel = select(pool, SelectConfig(quality_floor="1.0 * teacher"))
    assert sel.chosen == "teacher" and sel.eligible == ["teacher"]


def test_tie_on_size_goes_to_lower_latency() -> None:
    pool = [cand("slow", 0.9, 3.0, 1000), cand("fast", 0.9, 2.0, 1000), cand("big", 0.95, 1, 9999)]
    assert select(pool, SelectConfig(quality_floor="0.9")).chosen == "fast"


def test_size_by_parameters() -> None:
    pool = [cand("a", 0.9, 1.0, 100, params=50), cand("b", 0.9, 1.0, 50, params=100)]
    assert select(pool, SelectConfig(quality_floor="0.5")).chosen == "b"
    assert select(pool, SelectConfig(quality_floor="0.5", size="parameters")).chosen == "a"


def test_relative_floor_needs_teacher(pool: list[dict[str, Any]]) -> None:
    with pytest.raises(SmallfitError, match="no candidate named 'teacher'"):
        select(pool[1:], SelectConfig(quality_floor="0.98 * teacher"))
    assert select(pool[1:], SelectConfig(quality_floor="0.5")).chosen == "linear"
    assert select(pool, SelectConfig(), teacher_name="minilm").floor == pytest.approx(0.98 * 0.92)


def test_other_metric_and_missing_latency(pool: list[dict[str, Any]]) -> None:
    sel = select(pool, SelectConfig(metric="macro_f1", quality_floor="0.91"))
    assert sel.chosen == "minilm" and sel.metric == "macro_f1"
    del pool[0]["speed"]["threads"]["1"]
    with pytest.raises(SmallfitError, match="teacher"):
        pareto_front(pool)


def test_format_table_and_json(pool: list[dict[str, Any]]) -> None:
    sel = select(pool, SelectConfig())
    table = format_table(pool, sel, metric="accuracy")
    lines = table.splitlines()
    assert all(name in table for name in ("teacher", "minilm", "linear", "bad"))
    row = {
        line.split()[1] if line.startswith((">", "*")) else line.split()[0]: line for line in lines
    }
    assert row["minilm"].startswith(">>*")
    assert row["teacher"].startswith("*") and row["linear"].startswith("*")
    assert not row["bad"].startswith(("*", ">"))
    assert "p50@4t" in lines[0] and "8.0" in row["minilm"]  # 40 / 5 = 8x faster
    header_width = len(lines[0])
    assert all(len(r) <= header_width + 2 for r in lines[2:6])

    payload = selection_json(pool, sel)
    assert "\n" not in payload
    data = json.loads(payload)
    assert data["chosen"] == "minilm"
    assert data["vs_teacher"]["speedup_p50_1t"] == pytest.approx(8.0)
    assert data["vs_teacher"]["size_ratio"] == pytest.approx(400 / 90)
    assert data["vs_teacher"]["quality_pct"] == pytest.approx(100 * 0.92 / 0.93)
    assert data["floor"] == pytest.approx(0.98 * 0.93) and data["ceiling_ms"] is None


def test_json_when_nothing_chosen(pool: list[dict[str, Any]]) -> None:
    sel = select(pool, SelectConfig(quality_floor="0.99"))
    data = json.loads(selection_json(pool, sel))
    assert data["chosen"] is None and "floor" in data["reason"]
    assert isinstance(sel, Selection) and sel.to_dict()["chosen"] is None
    assert not any(r.startswith(">>") for r in format_table(pool, sel).splitlines())


def remote(name: str, acc: float, p50: float) -> dict[str, Any]:
    """An LLM behind an API, as evaluate_candidate writes it: a tiny manifest on disk."""
    c = cand(name, acc, p50, 1_500, params=0)
    c["backend"] = "llm"
    c["speed"] = {"threads": {"1": c["speed"]["threads"]["1"]}, "remote": True}
    c["cost"] = {"per_1m_queries_usd": 112.5}
    return c


def test_an_api_teacher_is_never_the_smallest() -> None:
    pool = [remote("teacher", 0.93, 1500.0), cand("minilm", 0.92, 5.0, 90_000_000)]
    pool[1]["cost"] = {"per_1m_queries_usd": 0.0023}
    chosen = select(pool, SelectConfig(quality_floor="0.98 * teacher"))
    assert chosen.chosen == "minilm"
    table = format_table(pool, chosen)
    assert "$/1M" in table and "112" in table and "0.0023" in table
    teacher_row = next(line for line in table.splitlines() if " teacher " in line)
    assert "1500.000" in teacher_row
    # no local candidate reaches the floor: keep calling the API, and say so
    fallback = select(pool, SelectConfig(quality_floor="0.995 * teacher"))
    assert fallback.chosen == "teacher"
    assert "behind an API" in fallback.reason and "no local candidate" in fallback.reason
    # size ratios against an API model are meaningless; they are left out
    assert json.loads(selection_json(pool, chosen))["vs_teacher"]["size_ratio"] is None
