"""A classifier exported to ONNX, run by ONNX Runtime: no torch at inference time.

The graph maps (input_ids, attention_mask) to logits, pooling and head included. Texts are
tokenized with the ``tokenizers`` library from the exported ``tokenizer.json``, so loading an
ONNX model imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.models.base import MANIFEST, BaseClassifier, Signals, register_backend, softmax
from smallfit.models.precision import int8_pairs_may_overflow

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


def _pad_token(path: Path) -> str:
    config = path / "tokenizer_config.json"
    if config.is_file():
        token = json.loads(config.read_text("utf-8")).get("pad_token")
        if isinstance(token, dict):  # older files store an AddedToken
            token = token.get("content")
        if token:
            return str(token)
    return "[PAD]"


def padded_tokenizer(path: Path, max_length: int) -> Any:
    """The ``tokenizers`` tokenizer of an exported model directory, padding batches with its
    pad token and truncating to ``max_length``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    pad = _pad_token(path)
    pad_id = tokenizer.token_to_id(pad)
    if pad_id is None:
        raise SmallfitError(f"{path / TOKENIZER_FILE}: pad token {pad!r} not in vocab")
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def ort_session(graph: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session over ``graph`` with ``threads`` intra-op threads (0: its
    default, all cores) and every graph optimisation (:func:`session_options`)."""
    import onnxruntime as ort

    options = session_options(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def session_options(threads: int) -> Any:
    """The options every smallfit ONNX Runtime session shares: ``threads`` intra-op threads,
    one inter-op thread, and int8 products that never saturate.

    On an x86 CPU without VNNI (AVX2, or AVX-512 before Cascade Lake: an AMD EPYC Milan, most
    laptops) ONNX Runtime's default u8 x s8 kernel adds pairs of products into 16 bits, which
    can overflow; an int8 model then answers differently there than on a CPU with VNNI.
    ``session.x64quantprecision`` makes it rewrite the weights to u8 x u8, which does not
    overflow. It is set only there
    (:func:`~smallfit.models.precision.int8_pairs_may_overflow`): on an AMD EPYC with
    AVX512-VNNI it gave the same logits but a 1.5-2x slower int8 model at batch 1."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if int8_pairs_may_overflow():
        options.add_session_config_entry("session.x64quantprecision", "1")
    return options


PADDING_SLACK = 0.25
"""A group of texts may hold this share of padding tokens (beyond :data:`PADDING_FREE`)."""
PADDING_FREE = 4
"""Padding tokens a group may always hold: a session call costs about what a few tokens do."""


def length_groups(lengths: np.ndarray, max_size: int) -> list[np.ndarray]:
    """Row indices grouped for batched inference: sorted by token length, each group at most
    ``max_size`` rows, and a group grows only while its padded size (rows x longest) stays within
    ``1 + PADDING_SLACK`` of its real tokens plus ``PADDING_FREE``."""
    order = np.argsort(lengths, kind="stable")
    groups: list[np.ndarray] = []
    start, real = 0, 0
    for end, row in enumerate(order):
        n = int(lengths[row])
        padded = (end - start + 1) * n
        if end > start and (
            end - start >= max_size or padded > (real + n) * (1 + PADDING_SLACK) + PADDING_FREE
        ):
            groups.append(order[start:end])
            start, real = end, 0
        real += n
    if len(order):
        groups.append(order[start:])
    return groups


@register_backend("onnx")
class OnnxClassifier(BaseClassifier):
    """ONNX Runtime session + fast tokenizer + label names."""

    def __init__(
        self,
        path: Path,
        *,
        labels: list[str],
        name: str,
        max_length: int,
        temperature: float = 1.0,
        parameters: int = 0,
        quantization: str | None = None,
        lineage: dict[str, Any] | None = None,
        batch_size: int = 64,
        architecture: dict[str, Any] | None = None,
        outputs: list[str] | None = None,
    ) -> None:

        self.path = Path(path)
        self.labels = list(labels)
        self.name = name
        self.max_length = max_length
        self.temperature = temperature
        self.parameters = parameters
        self.quantization = quantization
        self.lineage = dict(lineage or {})
        self.batch_size = batch_size
        self.bytes_on_disk = 0
        self.arch = architecture
        self.graph_outputs = list(outputs or ["logits"])
        """The graph's outputs, in order: ``logits``, then ``embeddings`` when it was exported
        with the pooled embedding its head reads."""
        self.tokenizer = padded_tokenizer(self.path, max_length)
        self._sessions: dict[int, Any] = {}
        self._threads = 0  # 0: ONNX Runtime's default (all cores)

    def set_num_threads(self, threads: int) -> None:
        """Run later predictions with ``threads`` intra-op threads (a session per setting)."""
        self._threads = threads

    def _session(self) -> Any:
        if self._threads not in self._sessions:
            self._sessions[self._threads] = ort_session(self.path / ONNX_FILE, self._threads)
        return self._sessions[self._threads]

    @property
    def num_parameters(self) -> int:
        return self.parameters

    def _forward(self, texts: Sequence[str], names: list[str]) -> list[np.ndarray]:
        """The graph outputs ``names`` for ``texts`` (input order), run in groups of similar
        token length (:func:`length_groups`), so that a mixed batch pays little for padding."""
        session = self._session()
        if len(texts) == 1:  # a single query: no grouping, no scatter (a server's usual call)
            one = self.tokenizer.encode(next(iter(texts)))
            feed = {
                "input_ids": np.array([one.ids], dtype=np.int64),
                "attention_mask": np.array([one.attention_mask], dtype=np.int64),
            }
            return list(session.run(names, feed))
        out: list[np.ndarray | None] = [None] * len(names)
        encoded = self.tokenizer.encode_batch(list(texts)) if texts else []
        all_ids = np.array([e.ids for e in encoded], dtype=np.int64)
        all_mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        lengths = all_mask.sum(axis=1) if len(texts) else np.zeros(0, np.int64)
        for idx in length_groups(lengths, self.batch_size):
            width = int(lengths[idx].max())
            ids, mask = all_ids[idx, :width], all_mask[idx, :width]
            got = session.run(names, {"input_ids": ids, "attention_mask": mask})
            for j, value in enumerate(got):
                if out[j] is None:
                    out[j] = np.zeros((len(texts), value.shape[1]), dtype=np.float32)
                out[j][idx] = value  # type: ignore[index]
        widths = {"logits": len(self.labels)}
        return [
            o if o is not None else np.zeros((0, widths.get(n, 0)), np.float32)
            for o, n in zip(out, names, strict=True)
        ]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self._forward(texts, [self.graph_outputs[0]])[0]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return softmax(self.logits(texts), temperature=self.temperature)

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray | None:
        encoded = self.tokenizer.encode_batch(list(texts)) if texts else []
        return np.array([sum(e.attention_mask) for e in encoded], dtype=np.int64)

    @property
    def signals(self) -> frozenset[str]:
        return frozenset({"logits"} | ({"embeddings"} & set(self.graph_outputs)))

    def outputs(self, texts: Sequence[str], *, need: frozenset[str] = frozenset()) -> Signals:
        """Probabilities, logits and (a graph exported with them) embeddings, one pass."""
        self._check_signals(need)
        names = ["logits", *(["embeddings"] if "embeddings" in need else [])]
        got = self._forward(texts, names)
        return self._from_logits(got[0], need, got[1] if len(got) > 1 else None)

    def save_files(self, path: Path) -> dict[str, Any]:
        import shutil

        if path.resolve() != self.path.resolve():
            for file in self.path.iterdir():
                if file.is_file() and file.name != MANIFEST:
                    shutil.copy2(file, path / file.name)
        return {
            "max_length": self.max_length,
            "temperature": self.temperature,
            "quantization": self.quantization,
            "architecture": self.arch,
            "outputs": self.graph_outputs,
        }

    @classmethod
    def load_files(cls, path: Path, manifest: dict[str, Any]) -> OnnxClassifier:
        return cls(
            path,
            labels=list(manifest["labels"]),
            name=manifest.get("name", path.name),
            max_length=int(manifest.get("max_length", 64)),
            temperature=float(manifest.get("temperature", 1.0)),
            parameters=int(manifest.get("parameters", 0)),
            quantization=manifest.get("quantization"),
            lineage=manifest.get("lineage", {}),
            architecture=manifest.get("architecture"),
            outputs=manifest.get("outputs"),
        )
