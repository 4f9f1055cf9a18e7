"""Students distilled from the teacher's labels: one registered handler per student kind.

The config loads light (pydantic only); the rest loads on first use."""

from __future__ import annotations

from smallfit.lazy import lazy_exports

_LAZY = {
    "DecoderStudent": "smallfit.distill.config",
    "GeneratorStudent": "smallfit.distill.config",
    "LinearStudent": "smallfit.distill.config",
    "LoraSettings": "smallfit.distill.config",
    "StaticStudent": "smallfit.distill.config",
    "StudentBase": "smallfit.distill.config",
    "StudentConfig": "smallfit.distill.config",
    "TaggerStudent": "smallfit.distill.config",
    "TransformerStudent": "smallfit.distill.config",
    "distill_student": "smallfit.distill.student",
    "linear_args": "smallfit.distill.student",
}

__all__ = [
    "DecoderStudent",
    "GeneratorStudent",
    "LinearStudent",
    "LoraSettings",
    "StaticStudent",
    "StudentBase",
    "StudentConfig",
    "TaggerStudent",
    "TransformerStudent",
    "distill_student",
    "linear_args",
]

__getattr__ = lazy_exports(__name__, _LAZY)
