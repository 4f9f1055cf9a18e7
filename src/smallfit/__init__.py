"""smallfit: find the smallest model that does your job, prove it on your data, and serve it.

Heavy modules (torch, transformers) load on first use of the names that need them, so importing
``smallfit`` and running ``smallfit --help`` stay fast.
"""

from __future__ import annotations

from smallfit.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "Classifier": "smallfit.models.base",
    "ModelInfo": "smallfit.models.base",
    "load": "smallfit.models.loading",
    "register_backend": "smallfit.models.base",
    "FitConfig": "smallfit.config",
    "DataConfig": "smallfit.config",
    "load_fit_config": "smallfit.config",
    "load_dataset": "smallfit.data",
    "fit": "smallfit.pipeline",
    "FitResult": "smallfit.pipeline",
    "SmallfitError": "smallfit.errors",
    "DataError": "smallfit.errors",
}

__all__ = sorted([*_LAZY, "__version__"])


__getattr__ = lazy_exports(__name__, _LAZY)
