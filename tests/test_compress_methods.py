"""One registration per compression method: every method's config has a handler and a
precondition, and the method list, the grid's choices, candidate names, the CLI help and the
package's exports all come from the configs (no hand-kept list to drift)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import smallfit.compress as compress_pkg
from smallfit.compress.base import registered
from smallfit.compress.core import parse_step
from smallfit.compress.steps import METHODS, QUANTIZE, STEP_TYPES, parse_quant, short_name
from smallfit.config import CompressGrid


def test_every_method_has_a_handler_a_precondition_and_an_export() -> None:
    assert set(STEP_TYPES) == registered()
    assert len(set(METHODS)) == len(METHODS) == len(STEP_TYPES)
    for kind in STEP_TYPES:
        assert kind.__name__ in compress_pkg.__all__, kind
        assert getattr(compress_pkg, kind.__name__) is kind
        assert type(parse_step(kind.example)) is kind  # its CLI example parses to it
    assert "int4-weight" in METHODS and "OrtInt4Weight" in compress_pkg.__all__


def test_the_grid_offers_every_quantizing_method_and_names_it_once() -> None:
    quantizing = [m for m, k in zip(METHODS, STEP_TYPES, strict=True) if k.quantizes]
    assert ("torch", "onnx", *quantizing) == QUANTIZE
    shorts = [short_name(q) for q in QUANTIZE]
    assert len(set(shorts)) == len(shorts)
    for quant in quantizing:
        assert parse_quant(quant).method == quant
    names = [c.name for c in CompressGrid(layers=[None, 3], quantize=list(QUANTIZE)).expand()]
    # the uncompressed torch model is the student itself, not a candidate
    assert names == [*shorts[1:], *(f"l3-{s}" for s in shorts)]
    trimmed = CompressGrid(
        trim_vocab=[False, True], layers=[None, 3], quantize=["torch", "int8-dynamic"]
    )
    named = {c.name: [s.method for s in c.steps] for c in trimmed.expand("graph")}
    assert named["tv-torch"] == ["trim-vocab"]
    assert named["tv-l3-int8"] == ["trim-vocab", "drop-layers", "onnx", "int8-dynamic"]
    assert "torch" not in named and named["int8"] == ["onnx", "int8-dynamic"]
    with pytest.raises(ValidationError, match="'int3' is not one of torch, onnx, int8-dynamic"):
        CompressGrid(quantize=["int3"])
    with pytest.raises(ValueError, match="not a quantization method"):
        parse_quant("onnx")


def test_the_compress_help_lists_every_method() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "smallfit.cli", "compress", "--help"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    text = " ".join(out.stdout.split())
    for kind in STEP_TYPES:
        assert f"'{kind.example}'" in text, kind


def test_the_config_docs_name_every_method() -> None:
    from smallfit.config import CompressCandidate

    grid = CompressGrid.model_fields["quantize"].description or ""
    steps = CompressCandidate.model_fields["steps"].description or ""
    assert all(f"`{q}`" in grid for q in QUANTIZE), grid
    assert all(f"`{m}`" in steps for m in METHODS), steps


def test_a_cached_model_is_keyed_by_source_steps_healing_and_revision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from smallfit.compress import core

    steps = [parse_step("drop-layers:keep=3"), parse_step("onnx")]
    key = core.step_key("source", steps, "labels")
    assert key == core.step_key(
        "source", [parse_step("drop-layers:keep=3"), parse_step("onnx")], "labels"
    )
    others = {
        core.step_key("other", steps, "labels"),
        core.step_key("source", steps[:1], "labels"),
        core.step_key("source", steps, None),
    }
    # a smallfit whose steps make other models from the same config reuses nothing older
    monkeypatch.setattr(core, "STEPS_REVISION", core.STEPS_REVISION + 1)
    others.add(core.step_key("source", steps, "labels"))
    assert key not in others and len(others) == 4


def _trimmed_manifest(folder: Path, untrimmed_from: Path) -> Path:
    folder.mkdir(parents=True)
    step = {"method": "trim-vocab", "metrics": {"untrimmed_from": str(untrimmed_from)}}
    manifest = {"kind": "transformer", "labels": ["a"], "lineage": {"compression": [step]}}
    (folder / "smallfit.json").write_text(json.dumps(manifest), "utf-8")
    return folder


def test_a_trimmed_model_finds_its_untrimmed_tokenizer_after_the_run_moves(tmp_path: Path) -> None:
    """The trim step records the source's absolute path; a run copied elsewhere reads its own
    copy of the source (a sibling by name), and the original once the sibling is gone."""
    from smallfit.models.vocab import untrimmed_tokenizer

    original = tmp_path / "run" / "models" / "student"
    original.mkdir(parents=True)
    (original / "tokenizer.json").write_text("{}", "utf-8")
    trimmed = _trimmed_manifest(tmp_path / "run" / "models" / "student-tv", original)
    assert untrimmed_tokenizer(trimmed) == original / "tokenizer.json"

    moved = tmp_path / "moved" / "models"
    shutil.copytree(tmp_path / "run" / "models", moved)
    shutil.rmtree(tmp_path / "run")
    assert untrimmed_tokenizer(moved / "student-tv") == moved / "student" / "tokenizer.json"
    shutil.rmtree(moved / "student")
    assert untrimmed_tokenizer(moved / "student-tv") is None
    elsewhere = _trimmed_manifest(tmp_path / "other" / "tv", moved / "gone")
    assert untrimmed_tokenizer(elsewhere) is None
