"""A token tagger exported to ONNX and run by ONNX Runtime (backend ``tagger-onnx``): no torch
at inference. The graph maps (input_ids, attention_mask) to tag logits per token; texts are
tokenized with the ``tokenizers`` library from the exported ``tokenizer.json`` (its character
offsets place the spans), and answers are read exactly as the PyTorch tagger reads them
(:func:`smallfit.models.tagger.decode`).
(:mod:`smallfit.compress.tagger_steps` writes one.)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.fields import FieldSchema
from smallfit.models.base import dir_bytes, read_manifest, write_json
from smallfit.models.extractor import BaseExtractor
from smallfit.models.onnx import ONNX_FILE, ort_session, padded_tokenizer
from smallfit.models.tagger import Extraction, bio_tags, decode

KIND = "tagger-onnx"


class OnnxTagger(BaseExtractor):
    """ONNX Runtime session + fast tokenizer + the field schema."""

    kind = KIND

    def __init__(
        self,
        path: Path,
        schema: FieldSchema,
        *,
        name: str,
        max_length: int,
        parameters: int = 0,
        quantization: str | None = None,
        lineage: dict[str, Any] | None = None,
        tags: list[str] | None = None,
    ) -> None:

        self.path = Path(path)
        self.schema = schema
        self.tags = list(tags) if tags is not None else bio_tags(schema)
        """The tag of each output column (a user's tagger keeps its own order)."""
        self.name = name
        self.max_length = max_length
        self.parameters = parameters
        self.quantization = quantization
        self.lineage = dict(lineage or {})
        self.bytes_on_disk = 0
        self.tokenizer = padded_tokenizer(self.path, max_length)
        self._sessions: dict[int, Any] = {}
        self._threads = 0

    @property
    def num_parameters(self) -> int:
        return self.parameters

    def set_num_threads(self, threads: int) -> None:
        self._threads = threads

    def close(self) -> None:
        self._sessions.clear()

    def _session(self) -> Any:
        if self._threads not in self._sessions:
            self._sessions[self._threads] = ort_session(self.path / ONNX_FILE, self._threads)
        return self._sessions[self._threads]

    def token_probs(
        self, texts: Sequence[str]
    ) -> tuple[list[np.ndarray], list[list[tuple[int, int]]]]:
        """Each text's tag probabilities (its tokens x tags) and its tokens' offsets."""
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        (logits,) = self._session().run(["logits"], {"input_ids": ids, "attention_mask": mask})
        logits = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=-1, keepdims=True)
        out_p, out_o = [], []
        for row, e in enumerate(encoded):
            keep = mask[row].astype(bool)
            out_p.append(probs[row][keep])
            out_o.append([o for o, k in zip(e.offsets, keep, strict=True) if k])
        return out_p, out_o

    def extract(self, texts: Sequence[str], *, batch_size: int = 64) -> list[Extraction]:
        """The fields of each text (length-sorted batches, answers in input order)."""
        out: list[Extraction | None] = [None] * len(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = [texts[i] for i in idx]
            probs, offsets = self.token_probs(batch)
            for i, text, o, p in zip(idx, batch, offsets, probs, strict=True):
                out[i] = decode(text, o, p, self.tags)
        return [e for e in out if e is not None]

    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
        """Write the manifest beside the graph (the graph and tokenizer are already there)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() != self.path.resolve():  # the graph and tokenizer files, copied
            for file in self.path.iterdir():
                if file.is_file() and file.name != "smallfit.json":
                    shutil.copy2(file, out / file.name)
        manifest = self.manifest(
            metrics, tags=self.tags, max_length=self.max_length, quantization=self.quantization
        )
        write_json(out / "smallfit.json", manifest)
        self.bytes_on_disk = dir_bytes(out)
        return out

    @classmethod
    def load(cls, path: str | Path) -> OnnxTagger:
        where = Path(path)
        manifest = read_manifest(where)
        model = cls(
            where,
            FieldSchema.from_dict(manifest["schema"]),
            name=manifest["name"],
            max_length=int(manifest["max_length"]),
            parameters=int(manifest.get("parameters") or 0),
            quantization=manifest.get("quantization"),
            lineage=manifest.get("lineage"),
            tags=manifest.get("tags"),
        )
        model.bytes_on_disk = dir_bytes(where)
        return model
