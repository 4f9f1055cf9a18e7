"""Which compressed candidates a fit builds: a grid and candidates spelled out step by step
(the steps themselves are :mod:`smallfit.compress.steps`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from smallfit.compress.steps import (
    QUANTIZE,
    CompressionStep,
    DropLayers,
    HealConfig,
    OnnxExport,
    PruneStructured,
    TrimVocab,
    parse_quant,
    short_name,
    step_type,
)
from smallfit.schema import Strict, parse_duration


class CompressCandidate(Strict):
    """One compressed candidate, spelled out: a name and its steps in order."""

    name: str
    """Suffix of the candidate's name: `<student>-<name>`."""
    steps: list[CompressionStep] = Field(min_length=1)
    """The steps, each a `method` (`trim-vocab`, `drop-layers`, `prune`, `magnitude`, `onnx`,
    `int8-dynamic`, `int8-static`, `int4-weight`, and for a generator `gguf-q8_0`,
    `gguf-q4_k_m`; each step's options below) with its options."""


class CompressGrid(Strict):
    """A grid of candidates: every combination of vocabulary trimming x layers x pruning x
    quantization."""

    trim_vocab: list[bool] = [False]
    """Whether the vocabulary is trimmed to the training texts' tokens first (`trim-vocab`)."""
    layers: list[int | None] = [None, 3]
    """Layers kept (`drop-layers`, alternate); null keeps them all."""
    prune: list[float] = [0.0]
    """Share of attention heads and of FFN neurons removed (`prune`); 0 prunes nothing."""
    quantize: list[str] = ["int8-dynamic"]
    """How the result runs: `torch` (PyTorch fp32), `onnx` (float ONNX) or ONNX with a
    quantization method: `int8-dynamic`, `int8-static` or `int4-weight`; for a generator
    student (GGUF), `gguf-q8_0` or `gguf-q4_k_m` by llama.cpp. Each source gets the choices
    that apply to it."""
    heal: HealConfig = HealConfig()
    """Healing after dropping layers or pruning."""

    @field_validator("quantize")
    @classmethod
    def _known_quantize(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in QUANTIZE:
                raise ValueError(f"{value!r} is not one of {', '.join(QUANTIZE)}")
        return values

    def expand(self, family: str | None = None) -> list[CompressCandidate]:
        """The candidates in build order (least compressed first, so prefixes are shared).
        ``family`` keeps those that apply to one kind of model: ``gguf`` (a GGUF generator:
        only its quantizations, nothing dropped or pruned) or ``graph`` (the others: no GGUF
        quantization); None keeps every one."""
        out = []
        combos = [
            (trim, layers, share, quant)
            for trim in sorted(set(self.trim_vocab))
            for layers in self.layers
            for share in sorted(self.prune)
            for quant in self.quantize
        ]
        for trim, layers, share, quant in combos:
            gguf = quant not in ("torch", "onnx") and not step_type(quant).after_onnx
            if family == "gguf" and (not gguf or layers is not None or share > 0 or trim):
                continue
            if family == "graph" and gguf:
                continue
            steps: list[Any] = []
            parts = []
            if trim:
                steps.append(TrimVocab())
                parts.append(TrimVocab.short)
            if layers is not None:
                steps.append(DropLayers(keep=layers, heal=self.heal))
                parts.append(DropLayers.short.format(keep=layers))
            if share > 0:
                steps.append(PruneStructured(heads=share, ffn=share, heal=self.heal))
                parts.append(PruneStructured.short.format(percent=round(share * 100)))
            if quant != "torch" and not gguf:
                steps.append(OnnxExport())
            if quant not in ("torch", "onnx"):
                steps.append(parse_quant(quant))
            parts.append(short_name(quant))
            if len(steps) > 0:
                out.append(CompressCandidate(name="-".join(parts), steps=steps))
        return out


class CompressConfig(Strict):
    """Compressed candidates built from the transformer (and generator) students, measured like
    the others."""

    students: list[str] | None = None
    """Names of the students to compress; null: every transformer, tagger or generator student
    (there must be one)."""
    grid: CompressGrid | None = CompressGrid()
    """A grid of candidates; null for none."""
    candidates: list[CompressCandidate] = []
    """Candidates spelled out step by step, built after the grid's."""
    budget: str | None = Field("30m", description="stop building new candidates after this long")
    check_texts: int = Field(512, gt=0)
    """Texts each step checks itself on: dev first, then training texts (never test)."""

    @field_validator("budget")
    @classmethod
    def _check_budget(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    def expand(self, family: str | None = None) -> list[CompressCandidate]:
        """The grid's candidates (those of ``family``, see :meth:`CompressGrid.expand`), then
        the spelled-out ones (all of them: a step that does not apply fails with the reason)."""
        grid = self.grid.expand(family) if self.grid else []
        everything = [*grid, *self.candidates]
        names = [c.name for c in everything]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"compressed candidate names must be unique; repeated: {dupes}")
        return everything
