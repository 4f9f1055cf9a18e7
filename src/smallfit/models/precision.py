"""What this CPU's arithmetic does well: whether bfloat16 pays, whether int8 products can
overflow, and the ``/proc/cpuinfo`` reading both rest on.

bfloat16 autocast halves the bytes a matrix product moves, and CPUs with AVX-512 (through
oneDNN), AVX512-BF16 or AMX run it as fast as float32 or faster. A CPU without AVX-512 (an AMD
EPYC Milan, most laptops) has no oneDNN bfloat16 path: PyTorch falls back to a reference loop,
measured at 1 GFLOP/s against 145 for float32 on 2 cores of an EPYC Milan, and a teacher's
fine-tuning that takes minutes took hours. So every bfloat16 switch in smallfit (training's
``bf16``, bulk labelling's autocast) asks :func:`bf16_native` first and runs float32 where it
says no.

Without VNNI, x86 int8 dot products add pairs of u8 x s8 products into 16 bits, which can
overflow (:func:`int8_pairs_may_overflow`): ONNX Runtime sessions then ask for u8 x u8
(:func:`smallfit.models.onnx.session_options`).
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

log = logging.getLogger(__name__)


@functools.cache
def bf16_native(device: str = "cpu") -> bool:
    """True when ``device`` ("cpu" or "cuda") runs bfloat16 matrix products on a fast path."""
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast path
        native = False
    if not native:
        log.info(
            "this CPU has no fast bfloat16 path (%s): float32 instead",
            torch.backends.cpu.get_cpu_capability(),
        )
    return native


@functools.cache
def int8_pairs_may_overflow() -> bool:
    """True on an x86 CPU whose int8 dot products have no VNNI (neither AVX512-VNNI nor
    AVX-VNNI), read from ``/proc/cpuinfo`` (elsewhere: False)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpuinfo()[1]
    return bool(flags) and not {"avx512_vnni", "avx_vnni"} & flags


def cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str | None, set[str]]:
    """The CPU's model name and feature flags (x86 ``flags``, Arm ``Features``); without the
    file, the platform's processor name and no flags."""
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
