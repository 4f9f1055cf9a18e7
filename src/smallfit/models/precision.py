"""Whether bfloat16 pays on this machine.

bfloat16 autocast halves the bytes a matrix product moves, and CPUs with AVX-512 (through
oneDNN), AVX512-BF16 or AMX run it as fast as float32 or faster. A CPU without AVX-512 (an AMD
EPYC Milan, most laptops) has no oneDNN bfloat16 path: PyTorch falls back to a reference loop,
measured at 1 GFLOP/s against 145 for float32 on 2 cores of an EPYC Milan, and a teacher's
fine-tuning that takes minutes took hours. So every bfloat16 switch in smallfit (training's
``bf16``, bulk labelling's autocast) asks :func:`bf16_native` first and runs float32 where it
says no.
"""

from __future__ import annotations

import functools
import logging

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
