"""Where a measurement was taken: Python, CPU, threads and package versions."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

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
    model, flags = _cpuinfo()
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


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str | None, set[str]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None, set()
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        if model is not None and flags:
            break
    return model, flags


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
