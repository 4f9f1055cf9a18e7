"""Reading the data: splits from JSONL, CSV or Parquet, and the dataset a run uses (train,
dev, test).

The config loads light (pydantic only); the rest loads on first use."""

from __future__ import annotations

from smallfit.lazy import lazy_exports

_LAZY = {
    "DataConfig": "smallfit.data.config",
    "FORMATS": "smallfit.data.files",
    "NO_GOLD": "smallfit.data.files",
    "Dataset": "smallfit.data.dataset",
    "Split": "smallfit.data.files",
    "load_dataset": "smallfit.data.dataset",
    "read_split": "smallfit.data.files",
}

__all__ = [
    "FORMATS",
    "NO_GOLD",
    "DataConfig",
    "Dataset",
    "Split",
    "load_dataset",
    "read_split",
]

__getattr__ = lazy_exports(__name__, _LAZY)
