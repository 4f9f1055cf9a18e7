"""Compression: each method is a config (:mod:`smallfit.compress.steps`) plus one registered
handler (:func:`smallfit.compress.base.register_step`; STYLE rule 1).

``compress(model_dir, steps, out_dir=...)`` checks every step against the model it will meet
before any work starts, applies them in order and records each in the output's lineage.

The step configs import light (pydantic only); the rest loads on first use.
"""

from __future__ import annotations

from smallfit.compress.steps import (
    METHODS,
    CompressionStep,
    DropLayers,
    GgufQ4KM,
    GgufQ8,
    HealConfig,
    OnnxExport,
    OrtDynamicInt8,
    OrtInt4Weight,
    OrtStaticInt8,
    PruneMagnitude,
    PruneStructured,
    TrimVocab,
)
from smallfit.lazy import lazy_exports

_LAZY = {
    "CompressCandidate": "smallfit.compress.config",
    "CompressConfig": "smallfit.compress.config",
    "CompressGrid": "smallfit.compress.config",
    "HealData": "smallfit.compress.base",
    "compress": "smallfit.compress.core",
    "parse_step": "smallfit.compress.core",
}

__all__ = [
    "METHODS",
    "CompressCandidate",
    "CompressConfig",
    "CompressGrid",
    "CompressionStep",
    "DropLayers",
    "GgufQ4KM",
    "GgufQ8",
    "HealConfig",
    "HealData",
    "OnnxExport",
    "OrtDynamicInt8",
    "OrtInt4Weight",
    "OrtStaticInt8",
    "PruneMagnitude",
    "PruneStructured",
    "TrimVocab",
    "compress",
    "parse_step",
]


__getattr__ = lazy_exports(__name__, _LAZY)
