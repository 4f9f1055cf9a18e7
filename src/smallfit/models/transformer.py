"""Transformer encoder + mean pooling + linear head, in PyTorch.

The encoders in the zoo are sentence-transformers checkpoints trained for mean pooling, so the
pooled, L2-normalised embedding is already a strong feature and a linear head warm-started on it
converges in a fraction of an epoch. Saved as HF files (``config.json``, ``model.safetensors``,
tokenizer) plus ``head.safetensors``; no pickle. :class:`TorchClassifier` holds what every PyTorch
backend shares (batched inference, bf16, temperature); the decoder backend builds on it too.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from smallfit.errors import SmallfitError
from smallfit.models.base import SIGNALS, BaseClassifier, Signals, register_backend, softmax
from smallfit.models.precision import bf16_native

HEAD_FILE = "head.safetensors"

# Our own progress bars and messages say what is happening; keep transformers' load reports
# (e.g. "pooler weights unexpected", which is the point) and per-file bars out of the output.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


# Where each encoder family keeps its attention projections and FFN, relative to a layer:
# (query, key, value, attention output, FFN in, FFN out).
LAYER_PARTS = {
    "bert": (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ),
    "mpnet": (
        "attention.attn.q",
        "attention.attn.k",
        "attention.attn.v",
        "attention.attn.o",
        "intermediate.dense",
        "output.dense",
    ),
}


def load_encoder(path: str | Path, *, resized: bool = False) -> PreTrainedModel:
    """The bare encoder, without the pooler layer that mean pooling never uses (BERT, MPNet
    and most encoders accept ``add_pooling_layer``; others load as they are).

    ``resized``: the checkpoint's linear layers may be smaller than its config says (heads or
    FFN neurons were pruned away); each is rebuilt at the saved shape before loading."""
    if not resized:
        try:
            return AutoModel.from_pretrained(str(path), add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_pretrained(str(path))
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    try:
        encoder = AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        encoder = AutoModel.from_config(config)
    weights = Path(path) / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    for name, module in list(encoder.named_modules()):
        shape = shapes.get(f"{name}.weight")
        if isinstance(module, nn.Linear) and shape and shape != tuple(module.weight.shape):
            parent, _, leaf = name.rpartition(".")
            setattr(encoder.get_submodule(parent), leaf, nn.Linear(shape[1], shape[0]))
    encoder.load_state_dict(canonical_keys(load_file(str(weights)), encoder), strict=True)
    return encoder.eval()


_LEGACY = {".gamma": ".weight", ".beta": ".bias"}


def canonical_keys(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with legacy LayerNorm names (``gamma``/``beta``, which some transformers
    releases write on save) renamed to the ``weight``/``bias`` that ``module`` expects, so a
    checkpoint loads whichever transformers version saved it."""
    expected = set(module.state_dict())
    out = {}
    for key, value in state.items():
        if key not in expected:
            for old, new in _LEGACY.items():
                if key.endswith(old) and key[: -len(old)] + new in expected:
                    key = key[: -len(old)] + new
                    break
        out[key] = value
    return out


def encoder_layers(module: PooledClassifier) -> nn.ModuleList:
    """The encoder's list of transformer layers."""
    # The family's layer stack (BertEncoder, MPNetEncoder, ...) is a submodule reached by name.
    stack: Any = module.encoder.encoder
    return stack.layer


def architecture(module: PooledClassifier) -> dict[str, Any]:
    """Shapes that decide the cost of a query: layer count, widths of every layer's attention
    and FFN (they differ after structured pruning), vocabulary and label count."""
    config = module.encoder.config
    parts = LAYER_PARTS.get(config.model_type)
    attention, ffn = [], []
    for layer in encoder_layers(module):
        if parts is None:
            attention.append(config.hidden_size)
            ffn.append(config.intermediate_size)
            continue
        attention.append(layer.get_submodule(parts[0]).out_features)
        ffn.append(layer.get_submodule(parts[4]).out_features)
    return {
        "model_type": config.model_type,
        "layers": len(attention),
        "hidden": config.hidden_size,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "attention": attention,
        "ffn": ffn,
        "vocab": config.vocab_size,
        "num_labels": module.head.out_features,
    }


class PooledClassifier(nn.Module):
    """encoder -> masked mean pooling -> L2 normalisation -> dropout -> linear head."""

    def __init__(self, encoder: PreTrainedModel, num_labels: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # A single unpadded text needs no attention mask; without one, attention skips masking.
        encoder_mask = None if input_ids.shape[0] == 1 else attention_mask
        hidden = self.encoder(input_ids=input_ids, attention_mask=encoder_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return F.normalize(pooled.float(), dim=-1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any
    ) -> dict[str, torch.Tensor]:
        pooled = self.embed(input_ids, attention_mask)
        return {"logits": self.head(self.dropout(pooled))}


class TorchClassifier(BaseClassifier):
    """What the PyTorch backends share: a module whose ``forward(input_ids, attention_mask)``
    returns ``{"logits": ...}``, its tokenizer, length-sorted batched inference, bf16 autocast
    and a temperature. Subclasses add the features their head sees (:meth:`embed`), the head
    itself, how to get ready for training, and their files. :func:`smallfit.train.train_classifier`
    trains any of them."""

    def __init__(
        self,
        module: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        labels: list[str],
        name: str,
        max_length: int = 64,
        lineage: dict[str, Any] | None = None,
        batch_size: int = 64,
        temperature: float = 1.0,
    ) -> None:
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.name = name
        self.max_length = max_length
        self.lineage = dict(lineage or {})
        self.batch_size = batch_size
        self.autocast_bf16 = False
        self.bytes_on_disk = 0
        self.temperature = temperature
        self.tokenizer_file: str | None = None
        """The ``tokenizer.json`` text a loaded model saves back unchanged."""

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @abstractmethod
    def head(self) -> nn.Module:
        """The classification head: trained at ``head_lr``, warm-started on :meth:`embed`."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The features the head sees, (n, hidden) float32 (used to warm-start heads)."""

    @abstractmethod
    def prepare_training(self, *, freeze_embeddings: bool, freeze_layers: int) -> None:
        """Fix what the training config keeps fixed, before the optimizer is built."""

    @contextlib.contextmanager
    def bf16(self) -> Iterator[TorchClassifier]:
        """Run predictions in bfloat16 autocast inside this block (bulk labelling), where the
        CPU runs it natively (:func:`~smallfit.models.precision.bf16_native`)."""
        previous, self.autocast_bf16 = self.autocast_bf16, bf16_native()
        try:
            yield self
        finally:
            self.autocast_bf16 = previous

    def bulk(self) -> contextlib.AbstractContextManager[Any]:
        return self.bf16()

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray | None:
        if not texts:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.tokenize(texts)["attention_mask"]).sum(axis=1)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` tensors of a batch of texts."""
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, unpadded, as :meth:`tokenize` lays them out (training data)."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def _batches(self, texts: Sequence[str]) -> Iterator[tuple[np.ndarray, list[str]]]:
        """Length-sorted batches (less padding), yielding original indices with the texts."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield idx, [texts[i] for i in idx]

    def _run(
        self,
        texts: Sequence[str],
        width: int,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    ) -> np.ndarray:
        """``fn`` over length-sorted batches of ``texts`` in eval mode; rows in input order."""
        out = np.zeros((len(texts), width), dtype=np.float32)
        self.module.eval()
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bf16),
        ):
            for idx, batch in self._batches(texts):
                out[idx] = fn(self.tokenize(batch)).float().numpy()
        return out

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw head outputs (n, len(labels)), float32."""
        return self._run(
            texts,
            len(self.labels),
            lambda enc: self.module(enc["input_ids"], enc["attention_mask"])["logits"],
        )

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return softmax(self.logits(texts), temperature=self.temperature)

    @property
    def signals(self) -> frozenset[str]:
        return frozenset(SIGNALS)

    def outputs(self, texts: Sequence[str], *, need: frozenset[str] = frozenset()) -> Signals:
        """Probabilities and logits from one pass; embeddings from another when asked for."""
        self._check_signals(need)
        logits = self.logits(texts)
        embeddings = self.embed(texts) if "embeddings" in need else None
        return self._from_logits(logits, need, embeddings)


@register_backend("transformer")
class TransformerClassifier(TorchClassifier):
    """A :class:`PooledClassifier` with its tokenizer and label names."""

    module: PooledClassifier

    @classmethod
    def from_base(
        cls,
        base_dir: str | Path,
        *,
        labels: list[str],
        name: str,
        max_length: int = 64,
        lineage: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> TransformerClassifier:
        """A fresh classifier on a pretrained encoder directory; its head is initialised from
        ``seed`` (it drew from torch's unseeded process RNG, so no two fits were alike)."""
        encoder = load_encoder(base_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        torch.manual_seed(seed)
        module = PooledClassifier(encoder, len(labels))
        return cls(
            module, tokenizer, labels=labels, name=name, max_length=max_length, lineage=lineage
        )

    def architecture(self) -> dict[str, Any]:
        return architecture(self.module)

    def head(self) -> nn.Module:
        return self.module.head

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled, normalised embeddings (n, hidden), float32 (used to warm-start heads)."""
        return self._run(
            texts,
            self.module.head.in_features,
            lambda enc: self.module.embed(enc["input_ids"], enc["attention_mask"]),
        )

    def outputs(self, texts: Sequence[str], *, need: frozenset[str] = frozenset()) -> Signals:
        """Probabilities, logits and embeddings from one pass: the head applied to the pooled
        embedding is exactly what :meth:`logits` computes."""
        self._check_signals(need)
        if "embeddings" not in need:
            return super().outputs(texts, need=need)
        hidden = self.module.head.in_features

        def both(enc: dict[str, torch.Tensor]) -> torch.Tensor:
            pooled = self.module.embed(enc["input_ids"], enc["attention_mask"])
            return torch.cat([pooled, self.module.head(self.module.dropout(pooled))], dim=1)

        out = self._run(texts, hidden + len(self.labels), both)
        logits, embeddings = np.ascontiguousarray(out[:, hidden:]), out[:, :hidden].copy()
        return self._from_logits(logits, need, embeddings)

    def prepare_training(self, *, freeze_embeddings: bool, freeze_layers: int) -> None:
        """Fix the word embeddings and/or the bottom ``freeze_layers`` encoder layers (with all
        embeddings)."""
        encoder = self.module.encoder
        if freeze_embeddings:
            encoder.get_input_embeddings().weight.requires_grad_(False)
        if freeze_layers == 0:
            return
        stack = getattr(getattr(encoder, "encoder", None), "layer", None)
        if stack is None or freeze_layers > len(stack):
            have = "no layer stack" if stack is None else f"{len(stack)} layers"
            raise SmallfitError(f"train.freeze_layers={freeze_layers}, but the encoder has {have}")
        for module in [encoder.embeddings, *stack[:freeze_layers]]:
            module.requires_grad_(False)

    def save_files(self, path: Path) -> dict[str, Any]:
        self.module.encoder.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        if self.tokenizer_file is not None:
            # as loaded: the library's writer keeps one string an id, and a trimmed
            # vocabulary's stand-ins share their kept token's id (compress.vocab_trim)
            (path / "tokenizer.json").write_text(self.tokenizer_file, "utf-8")
        head = {k: v.detach().contiguous() for k, v in self.module.head.state_dict().items()}
        save_file(head, str(path / HEAD_FILE))
        arch = self.architecture()
        config = self.module.encoder.config
        return {
            "max_length": self.max_length,
            "pooling": "mean",
            "normalize": True,
            "temperature": self.temperature,
            "architecture": arch,
            "resized": any(a != config.hidden_size for a in arch["attention"])
            or any(f != config.intermediate_size for f in arch["ffn"]),
        }

    @classmethod
    def load_files(cls, path: Path, manifest: dict[str, Any]) -> TransformerClassifier:
        encoder = load_encoder(path, resized=bool(manifest.get("resized")))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        labels = list(manifest["labels"])
        module = PooledClassifier(encoder, len(labels))
        module.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        model = cls(
            module,
            tokenizer,
            labels=labels,
            name=manifest.get("name", path.name),
            max_length=int(manifest.get("max_length", 64)),
            lineage=manifest.get("lineage", {}),
            temperature=float(manifest.get("temperature", 1.0)),
        )
        file = path / "tokenizer.json"
        model.tokenizer_file = file.read_text("utf-8") if file.is_file() else None
        return model
