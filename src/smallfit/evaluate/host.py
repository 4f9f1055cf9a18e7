"""Where a measurement was taken: Python, CPU, threads and package versions."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from smallfit.models.precision import cpuinfo

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
PACKAGES = (
    "smallfit",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "scipy",
    "scikit-learn",
    "onnxruntime",
)


def environment() -> dict[str, Any]:
    """A JSON-ready description of this machine and software.

    Keys: ``python``, ``platform``, ``machine``, ``cpu_model``, ``cpu_flags`` (flag -> bool),
    ``logical_cores``, ``usable_cores`` (this process's CPU affinity), ``torch_threads`` (None
    unless torch is already imported; never imports it), ``packages`` (name -> version or None),
    ``timestamp`` (UTC, ISO 8601).
    """
    model, flags = cpuinfo()
    torch = sys.modules.get("torch")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": model,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "packages": {name: _version(name) for name in PACKAGES},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
