"""bfloat16 only where the CPU runs it natively: elsewhere (a CPU without AVX-512) PyTorch's
bfloat16 matrix products fall back to a reference loop about 150x slower than float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smallfit.models import load, precision, transformer

pytestmark = pytest.mark.slow


def test_bf16_native_agrees_with_the_cpu_capability_and_is_cached() -> None:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    native = precision.bf16_native()
    if capability in ("DEFAULT", "AVX2"):  # no AVX-512: oneDNN has no bfloat16 path
        assert native is False
    assert precision.bf16_native() is native  # probed once
    if not torch.cuda.is_available():
        assert precision.bf16_native("cuda") is False


def test_bulk_prediction_stays_float32_where_bf16_is_not_native(
    snips_minilm: Path, snips_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load(snips_minilm)
    texts = snips_texts[:16]
    plain = model.predict_proba(texts)
    monkeypatch.setattr(transformer, "bf16_native", lambda device="cpu": False)
    with model.bulk():
        assert model.autocast_bf16 is False
        assert np.array_equal(model.predict_proba(texts), plain)  # the same float32 pass
    monkeypatch.setattr(transformer, "bf16_native", lambda device="cpu": True)
    with model.bulk():
        assert model.autocast_bf16 is True
    assert model.autocast_bf16 is False  # restored on leaving the block


def test_int8_sessions_ask_for_u8u8_only_where_pairs_may_overflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from smallfit.models import onnx

    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    vnni = {"avx512_vnni", "avx_vnni"} & set(flags)
    assert onnx.int8_pairs_may_overflow() is (not vnni)  # an x86 machine, as CI's are
    for overflow in (True, False):
        monkeypatch.setattr(onnx, "int8_pairs_may_overflow", lambda o=overflow: o)
        options = onnx.session_options(1)
        try:
            value = options.get_session_config_entry("session.x64quantprecision")
        except Exception:  # ONNX Runtime raises for a key never set
            value = None
        assert (value == "1") is overflow
