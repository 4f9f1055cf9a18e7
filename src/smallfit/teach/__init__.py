"""The teacher: built (fine-tuned, loaded or an LLM client) and asked to label the pool.

The config loads light (pydantic only); the rest loads on first use."""

from __future__ import annotations

from smallfit.lazy import lazy_exports

_LAZY = {
    "FinetuneTeacher": "smallfit.teach.config",
    "GoldTeacher": "smallfit.teach.config",
    "LLMPrices": "smallfit.teach.config",
    "LLMTeacher": "smallfit.teach.config",
    "ModelTeacher": "smallfit.teach.config",
    "TeacherBase": "smallfit.teach.config",
    "TeacherConfig": "smallfit.teach.config",
    "LLM_CACHE": "smallfit.teach.teacher",
    "build_teacher": "smallfit.teach.teacher",
    "fit_dataset": "smallfit.teach.teacher",
    "label_pool": "smallfit.teach.teacher",
    "llm_classifier": "smallfit.teach.teacher",
    "one_hot": "smallfit.teach.teacher",
}

__all__ = [
    "LLM_CACHE",
    "FinetuneTeacher",
    "GoldTeacher",
    "LLMPrices",
    "LLMTeacher",
    "ModelTeacher",
    "TeacherBase",
    "TeacherConfig",
    "build_teacher",
    "fit_dataset",
    "label_pool",
    "llm_classifier",
    "one_hot",
]

__getattr__ = lazy_exports(__name__, _LAZY)
