"""Model backends. Import :func:`load` and :class:`Classifier` from here or from ``smallfit``."""

from smallfit.models.base import (
    BaseClassifier,
    Classifier,
    ModelInfo,
    backend_class,
    load,
    read_manifest,
    register_backend,
)

__all__ = [
    "BaseClassifier",
    "Classifier",
    "ModelInfo",
    "backend_class",
    "load",
    "read_manifest",
    "register_backend",
]
