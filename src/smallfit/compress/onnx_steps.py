"""ONNX export with the dynamo exporter, checked against PyTorch on padded batches."""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.compress.base import StepContext, register_step
from smallfit.compress.steps import OnnxExport
from smallfit.errors import SmallfitError
from smallfit.models.base import load_as
from smallfit.models.onnx import ONNX_FILE, OnnxClassifier

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _onnx_can_apply(step: OnnxExport, manifest: dict[str, Any]) -> dict[str, Any]:
    if manifest["kind"] != "transformer":
        raise SmallfitError(
            f"ONNX export applies to transformer models; this one is '{manifest['kind']}'"
        )
    return {**manifest, "kind": "onnx", "quantization": None}


GRAPH_OUTPUTS = ["logits", "embeddings"]
"""What the exported graph gives: the logits, and the pooled embedding the head reads (an
out-of-scope score may compare it with the training texts')."""


def _logits_graph(module: Any) -> Any:
    """(input_ids, attention_mask) -> (logits, pooled embedding): the graph that is exported."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            pooled = self.inner.embed(input_ids, attention_mask)
            return self.inner.head(self.inner.dropout(pooled)), pooled

    return Logits().eval()


@register_step(OnnxExport, precondition=_onnx_can_apply)
def _export(step: OnnxExport, model_dir: Path, out: Path, ctx: StepContext) -> dict[str, Any]:
    import torch

    from smallfit.models.transformer import TransformerClassifier

    texts = ctx.check_texts

    model = load_as(model_dir, TransformerClassifier)
    graph = _logits_graph(model.module)
    out.mkdir(parents=True)
    sample = model.tokenize(texts[:4] if len(texts) > 1 else texts * 2)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    # The exporter's own warnings and log lines (deprecations, optional torchvision ops) are not
    # actionable for a user; what matters is checked below: parity with PyTorch.
    with torch.inference_mode(), warnings.catch_warnings(), quiet("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (sample["input_ids"], sample["attention_mask"]),
            str(out / ONNX_FILE),
            dynamo=True,
            opset_version=step.opset,
            input_names=["input_ids", "attention_mask"],
            output_names=GRAPH_OUTPUTS,
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            external_data=False,
            verbose=False,
        )
    copy_tokenizer(model_dir, out)
    exported = OnnxClassifier(
        out,
        labels=model.labels,
        name=model.name,
        max_length=model.max_length,
        temperature=model.temperature,
        parameters=model.num_parameters,
        lineage=model.lineage,
        architecture=model.architecture(),
        outputs=GRAPH_OUTPUTS,
    )
    exported.save(out)
    # Parity on padded batches (the known trap of the legacy exporter): the user's texts,
    # length-mixed so that most rows are padded.
    check = texts[:256]
    with torch.inference_mode():
        reference = model.logits(check)
    got = exported.logits(check)
    diff = float(np.abs(got - reference).max())
    embedded = exported.outputs(check, need=frozenset({"embeddings"})).embeddings
    embed_diff = float(np.abs(embedded - model.embed(check)).max())
    worst = max(diff, embed_diff)
    if not worst <= step.tolerance:
        raise SmallfitError(
            f"ONNX export differs from PyTorch by {worst:.3g} in logits or embeddings on padded "
            f"batches (tolerance {step.tolerance:g}); the export is wrong, not saved"
        )
    agreement = float((got.argmax(1) == reference.argmax(1)).mean())
    return {
        "max_abs_logit_diff": diff,
        "max_abs_embedding_diff": embed_diff,
        "argmax_agreement": agreement,
        "check_texts": len(check),
    }


def copy_tokenizer(src: Path, out: Path) -> None:
    """The tokenizer files of ``src`` (those it has) copied beside an exported graph."""
    for file in _TOKENIZER_FILES:
        if (src / file).is_file():
            shutil.copy2(src / file, out / file)


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Raise the named loggers ("" = root) to ERROR for the block."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
