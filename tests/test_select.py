from __future__ import annotations

import json
from typing import Any

import pytest

from smallfit.config import SelectConfig
from smallfit.errors import SmallfitError
from smallfit.run.records import CandidateResult
from smallfit.select import Selection, format_table, pareto_front, select, selection_json


def R(candidates: list[dict[str, Any]]) -> list[CandidateResult]:
    """The candidates as selection reads them: records, as evaluation wrote them."""
    return [CandidateResult.model_validate(c) for c in candidates]


def cand(name: str, acc: float, p50: float, size: int, *, params: int = 1000) -> dict[str, Any]:
    return {
        "name": name,
        "backend": "linear" if name.startswith("lin") else "transformer",
        "model_dir": f"/runs/x/models/{name}",
        "parameters": params,
        "bytes_on_disk": size,
        "lineage": {},
        "quality": {
            "accuracy": acc,
            "macro_f1": acc - 0.01,
            "teacher_agreement": acc,
            "ece": 0.05,
            "n": 600,
        },
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
    assert pareto_front(R(pool)) == ["teacher", "minilm", "linear"]
    # an exact duplicate does not dominate its twin
    twin = cand("twin", 0.90, 0.5, 10_000_000)
    assert pareto_front(R([*pool, twin])) == ["teacher", "minilm", "linear", "twin"]


def test_relative_floor_picks_smallest(pool: list[dict[str, Any]]) -> None:
    sel = select(R(pool), SelectConfig(quality_floor="0.98 * teacher"))
    assert sel.floor == pytest.approx(0.98 * 0.93)
    assert sel.chosen == "minilm"  # linear 0.90 < 0.9114
    assert sel.eligible == ["teacher", "minilm"]
    assert "minilm" in sel.reason


def test_absolute_floor(pool: list[dict[str, Any]]) -> None:
    sel = select(R(pool), SelectConfig(quality_floor="0.9"))
    assert (sel.chosen, sel.floor) == ("linear", 0.9)


def test_ceiling_excludes_slow(pool: list[dict[str, Any]]) -> None:
    sel = select(R(pool), SelectConfig(quality_floor="0.92", latency_ceiling_ms=10))
    assert sel.chosen == "minilm"
    sel = select(R(pool), SelectConfig(quality_floor="0.93", latency_ceiling_ms=10))
    assert sel.chosen is None
    assert "ceiling" in sel.reason and "teacher" in sel.reason


def test_nothing_eligible(pool: list[dict[str, Any]]) -> None:
    sel = select(R(pool), SelectConfig(quality_floor="0.99"))
    assert sel.chosen is None and sel.eligible == []
    assert "0.9300" in sel.reason and "teacher" in sel.reason and "0.9900" in sel.reason


def test_teacher_only_eligible(pool: list[dict[str, Any]]) -> None:
    sel = select(R(pool), SelectConfig(quality_floor="1.0 * teacher"))
    assert sel.chosen == "teacher" and sel.eligible == ["teacher"]


def test_tie_on_size_goes_to_lower_latency() -> None:
    pool = [cand("slow", 0.9, 3.0, 1000), cand("fast", 0.9, 2.0, 1000), cand("big", 0.95, 1, 9999)]
    assert select(R(pool), SelectConfig(quality_floor="0.9")).chosen == "fast"


def test_size_by_parameters() -> None:
    pool = [cand("a", 0.9, 1.0, 100, params=50), cand("b", 0.9, 1.0, 50, params=100)]
    assert select(R(pool), SelectConfig(quality_floor="0.5")).chosen == "b"
    assert select(R(pool), SelectConfig(quality_floor="0.5", size="parameters")).chosen == "a"


def test_relative_floor_needs_teacher(pool: list[dict[str, Any]]) -> None:
    with pytest.raises(SmallfitError, match="no candidate named 'teacher'"):
        select(R(pool[1:]), SelectConfig(quality_floor="0.98 * teacher"))
    assert select(R(pool[1:]), SelectConfig(quality_floor="0.5")).chosen == "linear"
    assert select(R(pool), SelectConfig(), teacher_name="minilm").floor == pytest.approx(
        0.98 * 0.92
    )


def test_other_metric_and_missing_latency(pool: list[dict[str, Any]]) -> None:
    sel = select(R(pool), SelectConfig(metric="macro_f1", quality_floor="0.91"))
    assert sel.chosen == "minilm" and sel.metric == "macro_f1"
    del pool[0]["speed"]["threads"]["1"]
    with pytest.raises(SmallfitError, match="teacher"):
        pareto_front(R(pool))


def test_format_table_and_json(pool: list[dict[str, Any]]) -> None:
    sel = select(R(pool), SelectConfig())
    table = format_table(R(pool), sel, metric="accuracy")
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

    payload = selection_json(R(pool), sel)
    assert "\n" not in payload
    data = json.loads(payload)
    assert data["chosen"] == "minilm"
    assert data["vs_teacher"]["speedup_p50_1t"] == pytest.approx(8.0)
    assert data["vs_teacher"]["size_ratio"] == pytest.approx(400 / 90)
    assert data["vs_teacher"]["quality_pct"] == pytest.approx(100 * 0.92 / 0.93)
    assert data["floor"] == pytest.approx(0.98 * 0.93) and data["ceiling_ms"] is None


def test_json_when_nothing_chosen(pool: list[dict[str, Any]]) -> None:
    sel = select(R(pool), SelectConfig(quality_floor="0.99"))
    data = json.loads(selection_json(R(pool), sel))
    assert data["chosen"] is None and "floor" in data["reason"]
    assert isinstance(sel, Selection) and sel.to_dict()["chosen"] is None
    assert not any(r.startswith(">>") for r in format_table(R(pool), sel).splitlines())


def remote(name: str, acc: float, p50: float) -> dict[str, Any]:
    """An LLM behind an API, as evaluate_candidate writes it: a tiny manifest on disk."""
    c = cand(name, acc, p50, 1_500, params=0)
    c["backend"] = "llm"
    c["speed"] = {"threads": {"1": c["speed"]["threads"]["1"]}, "remote": True}
    c["cost"] = {"per_1m_queries_usd": 112.5, "basis": "measured tokens at its prices"}
    return c


def test_an_api_teacher_is_never_the_smallest() -> None:
    pool = [remote("teacher", 0.93, 1500.0), cand("minilm", 0.92, 5.0, 90_000_000)]
    pool[1]["cost"] = {"per_1m_queries_usd": 0.0023, "basis": "this machine's hour"}
    chosen = select(R(pool), SelectConfig(quality_floor="0.98 * teacher"))
    assert chosen.chosen == "minilm"
    table = format_table(R(pool), chosen)
    assert "$/1M" in table and "112" in table and "0.0023" in table
    teacher_row = next(line for line in table.splitlines() if " teacher " in line)
    assert "1500.000" in teacher_row
    # no local candidate reaches the floor: keep calling the API, and say so
    fallback = select(R(pool), SelectConfig(quality_floor="0.995 * teacher"))
    assert fallback.chosen == "teacher"
    assert "behind an API" in fallback.reason and "no local candidate" in fallback.reason
    # size ratios against an API model are meaningless; they are left out
    assert json.loads(selection_json(R(pool), chosen))["vs_teacher"]["size_ratio"] is None


# -- what the test set cannot tell apart ---------------------------------------------------------


def measured(
    c: dict[str, Any], lo: float, hi: float, diff: tuple[float, float, float] | None = None
) -> dict[str, Any]:
    """``c`` with a 95% accuracy interval and, optionally, a paired (diff, lo, hi) vs teacher."""
    q = c["quality"]
    q["n"] = 3080
    q["ci95"] = {"accuracy": [lo, hi], "macro_f1": [lo - 0.01, hi - 0.01], "ece": [0.04, 0.06]}
    q["teacher_agreement"] = None
    if diff is not None:
        q["vs_teacher"] = {
            "accuracy": {"diff": diff[0], "ci95": [diff[1], diff[2]]},
            "macro_f1": {"diff": diff[0], "ci95": [diff[1], diff[2]]},
        }
    return c


@pytest.fixture
def close_pool() -> list[dict[str, Any]]:
    """The chosen minilm is 1 pt over the floor but its interval reaches under it; linear is
    left out 0.3 pt under the floor, within its interval; minilm's gap to the teacher is not
    resolved either."""
    return [
        measured(cand("teacher", 0.9395, 40.0, 400_000_000), 0.931, 0.948),
        measured(cand("minilm", 0.9295, 5.0, 90_000_000), 0.919, 0.938, (-0.01, -0.021, 0.001)),
        measured(cand("linear", 0.9162, 0.5, 10_000_000), 0.906, 0.926, (-0.023, -0.035, -0.01)),
        measured(cand("bad", 0.80, 50.0, 5_000_000), 0.78, 0.82, (-0.14, -0.16, -0.12)),
    ]


def test_selection_says_what_the_test_set_cannot_tell_apart(
    close_pool: list[dict[str, Any]],
) -> None:
    sel = select(R(close_pool), SelectConfig(quality_floor="0.9192"))
    assert sel.chosen == "minilm"  # the rule itself is unchanged: point estimates
    floor, rival, teacher = sel.resolution
    assert floor == (
        "the test set (3,080 texts) cannot tell minilm from the floor: its accuracy 92.95% has "
        "the 95% interval [91.90%, 93.80%], which straddles the floor 91.92%"
    )
    assert rival.startswith("the test set (3,080 texts) cannot tell linear (91.62%, 95% ")
    assert "left out under it, though its interval reaches it" in rival
    assert teacher == (
        "the test set (3,080 texts) cannot tell minilm from the teacher on accuracy: the "
        "difference -1.00 pt has the paired 95% interval [-2.10, +0.10] pt, which includes 0"
    )
    assert "bad" not in " ".join(sel.resolution)  # its interval stays under the floor
    data = json.loads(selection_json(R(close_pool), sel))
    assert data["resolution"] == list(sel.resolution)
    assert data["quality"]["ci95"]["accuracy"] == [0.919, 0.938] and data["quality"]["n"] == 3080
    assert data["quality"]["vs_teacher"]["accuracy"] == {"diff": -0.01, "ci95": [-0.021, 0.001]}
    table = format_table(R(close_pool), sel)
    row = next(line for line in table.splitlines() if " minilm " in line)
    assert "[91.90,93.80]" in row and "-1.00 [-2.10,+0.10]" in row
    teacher_row = next(line for line in table.splitlines() if " teacher " in line)
    assert "[93.10,94.80]" in teacher_row and "+" not in teacher_row
    assert "acc% 95% CI" in table.splitlines()[0] and "acc-teacher pt" in table
    assert table.count("resolution: ") == 3


def test_a_resolved_selection_has_nothing_to_add(close_pool: list[dict[str, Any]]) -> None:
    close_pool[1]["quality"]["ci95"]["accuracy"] = [0.925, 0.934]
    close_pool[1]["quality"]["vs_teacher"]["accuracy"]["ci95"] = [-0.015, -0.005]
    close_pool[2]["quality"]["ci95"]["accuracy"] = [0.910, 0.919]
    sel = select(R(close_pool), SelectConfig(quality_floor="0.9192"))
    assert sel.chosen == "minilm" and sel.resolution == ()
    assert json.loads(selection_json(R(close_pool), sel))["resolution"] == []
    assert "resolution:" not in format_table(R(close_pool), sel)


def test_nothing_chosen_yet_the_best_is_within_reach(close_pool: list[dict[str, Any]]) -> None:
    sel = select(R(close_pool), SelectConfig(quality_floor="0.945"))
    assert sel.chosen is None
    assert sel.resolution[0].startswith("the test set (3,080 texts) cannot tell teacher from the")
    assert len(sel.resolution) == 1  # minilm's interval ends at 93.80%, under 94.50%


def test_results_without_intervals_say_so(pool: list[dict[str, Any]]) -> None:
    sel = select(R(pool), SelectConfig())
    assert sel.chosen == "minilm"
    assert sel.resolution == (
        "minilm has no 95% interval for accuracy (measured before smallfit recorded them): "
        "whether the test set resolves the floor is unknown",
    )
    row = next(line for line in format_table(R(pool), sel).splitlines() if " minilm " in line)
    assert " - " in row
    data = json.loads(selection_json(R(pool), sel))
    assert data["quality"]["ci95"] is None and data["quality"]["vs_teacher"] is None
