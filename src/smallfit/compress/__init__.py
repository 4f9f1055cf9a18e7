"""Compression: each method is a config plus one registered handler (STYLE rule 1).

``compress(model_dir, steps, out_dir=...)`` checks every step against the model it will meet
before any work starts, applies them in order and records each in the output's lineage.
"""

from smallfit.compress.core import HealData, compress, parse_step
from smallfit.compress.steps import (
    CompressionStep,
    DropLayers,
    HealConfig,
    OnnxExport,
    OrtDynamicInt8,
    OrtStaticInt8,
    PruneMagnitude,
    PruneStructured,
)

__all__ = [
    "CompressionStep",
    "DropLayers",
    "HealConfig",
    "HealData",
    "OnnxExport",
    "OrtDynamicInt8",
    "OrtStaticInt8",
    "PruneMagnitude",
    "PruneStructured",
    "compress",
    "parse_step",
]
