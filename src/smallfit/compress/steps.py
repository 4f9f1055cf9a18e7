"""Compression step configs (one per method; ``method`` tells them apart in YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class OnnxExport(_Step):
    """Export a transformer classifier to ONNX with the dynamo exporter, checked against
    PyTorch on padded batches."""

    method: Literal["onnx"] = "onnx"
    tolerance: float = Field(1e-3, gt=0)
    """Largest allowed |logit difference| to PyTorch on the check texts; above it the step fails."""
    opset: int = Field(18, ge=17)
    """ONNX opset version."""


class OrtDynamicInt8(_Step):
    """ONNX Runtime dynamic int8 quantization of the weights (activations quantized per batch)."""

    method: Literal["int8-dynamic"] = "int8-dynamic"
    per_channel: bool = True
    """One scale per output channel (per-tensor breaks models with outlier channels, e.g. mpnet)."""
    min_agreement: float = Field(0.97, ge=0, le=1)
    """Least argmax agreement with the float model on the check texts; below it the step fails."""
