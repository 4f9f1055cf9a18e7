"""The Classifier protocol, model metadata, the backend registry and the on-disk manifest.

Every model (teacher, student, compressed variant, cascade) is a Classifier. A model on disk is a
directory holding ``smallfit.json`` (the manifest) beside the backend's own files. Backends
register themselves by kind; :func:`load` reads the manifest and asks the registry, so the core
never branches on backend names. Nothing here unpickles anything.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from smallfit.engine.config import EngineConfig
from smallfit.errors import SmallfitError

MANIFEST = "smallfit.json"
MANIFEST_FORMAT = 1
MODEL_CARD = "MODEL_CARD.md"
"""The model card `smallfit report` writes beside a model: documentation, so it counts in
neither the model's size nor its content hash."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model is: name, backend, size and where it came from."""

    name: str
    backend: str
    parameters: int
    bytes_on_disk: int
    lineage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Classifier(Protocol):
    """A text classifier over a fixed label set."""

    labels: list[str]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities of shape (len(texts), len(labels)); rows sum to 1."""
        ...

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label of each text."""
        ...

    @property
    def info(self) -> ModelInfo: ...


def model_info(model: Any) -> ModelInfo:
    """What any model (a classifier or an extractor) is, from its attributes."""
    return ModelInfo(
        name=model.name,
        backend=model.kind,
        parameters=model.num_parameters,
        bytes_on_disk=model.bytes_on_disk,
        lineage=dict(model.lineage),
    )


SIGNALS = ("logits", "embeddings")
"""What a backend may give besides probabilities (see :meth:`BaseClassifier.outputs`)."""


@dataclass(frozen=True)
class Signals:
    """What a model says about a batch of texts: its probabilities, and where its backend gives
    them and they were asked for, its raw logits (before its temperature, which is kept beside
    them) and the embeddings its head reads. Rows are texts; slicing slices every array."""

    probs: np.ndarray
    logits: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    temperature: float = 1.0

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, rows: Any) -> Signals:
        return Signals(
            probs=self.probs[rows],
            logits=None if self.logits is None else self.logits[rows],
            embeddings=None if self.embeddings is None else self.embeddings[rows],
            temperature=self.temperature,
        )

    @staticmethod
    def of(raw: np.ndarray | Signals) -> Signals:
        """``raw`` as Signals (a bare array is probabilities)."""
        return raw if isinstance(raw, Signals) else Signals(probs=np.asarray(raw))


class BaseClassifier(ABC):
    """Shared behaviour of the built-in backends: predict from predict_proba, save with manifest."""

    kind: str = ""
    remote: bool = False
    """True for models behind a network API (they may be slow, fail, or cost per call)."""
    temperature: float = 1.0
    """The softmax temperature its probabilities are taken at (calibrated by training)."""
    bytes_on_disk: int = 0
    """The size of its saved directory (set by :func:`load` and :meth:`save`)."""
    labels: list[str]
    name: str
    lineage: dict[str, Any]

    def answer(self, texts: Sequence[str]) -> Any:
        """What a speed measurement times: :meth:`predict_proba` (an extractor's ``extract``)."""
        return self.predict_proba(texts)

    def close(self) -> None:
        """Release what the model holds open (connections, an answer store); nothing here."""
        return None  # a neutral default, not an abstract method

    def set_num_threads(self, threads: int) -> None:
        """Size a compute pool the model keeps of its own (ONNX Runtime's); nothing here:
        torch and BLAS pools are sized by :func:`smallfit.evaluate.speed.limit_threads`."""
        return None  # a neutral default, not an abstract method

    def use_engine(self, engine: EngineConfig) -> None:
        """Where the model's bulk labelling runs (an API model's requests can spread over
        Ray); nothing here: a local model labels in this process."""
        return None  # a neutral default, not an abstract method

    def measured_speed(self) -> dict[str, Any] | None:
        """Its speed as the model itself measured it (an API's real request latencies); None:
        the evaluation measures it locally."""
        return None

    def measured_cost(self) -> dict[str, Any] | None:
        """Its cost per million queries as the model itself knows it (an API's tokens at its
        prices); None: the evaluation prices this machine's time."""
        return None

    def unanswered(self, texts: Sequence[str]) -> np.ndarray | None:
        """Which of ``texts`` (already predicted) it gave no real answer for, as a bool mask
        (an LLM's unparseable replies: counted wrong); None: it answers every text."""
        return None

    def label_texts(self, texts: list[str], *, progress: bool) -> np.ndarray | None:
        """Label a training pool its own way (an LLM: through its budgeted, resumable store;
        NaN rows for texts it gave no answer), probabilities in its label order; None: label
        with :meth:`predict_proba`, cached by content (:func:`smallfit.teach.label_pool`)."""
        return None

    def bulk(self) -> contextlib.AbstractContextManager[Any]:
        """A context for predicting many texts at once (a torch model: bfloat16 autocast)."""
        return contextlib.nullcontext()

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray | None:
        """Real (unpadded, truncated) tokens per text, special tokens included, as the model
        encodes them; None when it has no tokenizer to ask (roofline arithmetic)."""
        return None

    @abstractmethod
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...

    @property
    def signals(self) -> frozenset[str]:
        """What :meth:`outputs` can give besides probabilities (names of :data:`SIGNALS`)."""
        return frozenset()

    def outputs(self, texts: Sequence[str], *, need: frozenset[str] = frozenset()) -> Signals:
        """The probabilities of ``texts`` and the other signals in ``need`` (one pass over the
        model where the backend allows). A backend that gives more overrides this."""
        self._check_signals(need)
        return Signals(probs=self.predict_proba(texts))

    def _from_logits(
        self, logits: np.ndarray, need: frozenset[str], embeddings: np.ndarray | None = None
    ) -> Signals:
        """Signals from raw logits: probabilities at the model's temperature, the logits when
        ``need`` asks for them, and ``embeddings`` as given."""
        probs = (
            softmax(logits, temperature=self.temperature)
            if len(logits)
            else np.zeros((0, len(self.labels)), dtype=np.float32)
        )
        return Signals(
            probs=probs,
            logits=logits if "logits" in need else None,
            embeddings=embeddings,
            temperature=self.temperature,
        )

    def _check_signals(self, need: frozenset[str]) -> None:
        missing = sorted(set(need) - self.signals)
        if missing:
            gives = ", ".join(sorted(self.signals)) or "only probabilities"
            raise SmallfitError(
                f"model {self.name} ({self.kind}) gives no {' or '.join(missing)} (it gives "
                f"{gives})"
            )

    def predict(self, texts: Sequence[str]) -> list[str]:
        if len(texts) == 0:
            return []
        probs = self.predict_proba(texts)
        return [self.labels[i] for i in probs.argmax(axis=1)]

    @property
    @abstractmethod
    def num_parameters(self) -> int: ...

    @property
    def info(self) -> ModelInfo:
        return model_info(self)

    @abstractmethod
    def save_files(self, path: Path) -> dict[str, Any]:
        """Write the backend's own files into ``path``; return extra manifest fields."""

    @classmethod
    @abstractmethod
    def load_files(cls, path: Path, manifest: dict[str, Any]) -> BaseClassifier:
        """Rebuild the model from ``path`` given its manifest."""

    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
        """Write the model and its manifest into directory ``path``; returns the path."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        extra = self.save_files(out)
        manifest = {
            "format": MANIFEST_FORMAT,
            "kind": self.kind,
            "name": self.name,
            "labels": list(self.labels),
            "parameters": self.num_parameters,
            "lineage": self.lineage,
            "metrics": metrics or {},
            **extra,
        }
        write_json(out / MANIFEST, manifest)
        self.bytes_on_disk = dir_bytes(out)
        return out


C = TypeVar("C", bound=type[BaseClassifier])

# kind -> "module:attribute"; built-ins are listed lazily so that loading a linear model never
# imports torch. Third-party backends call register_backend on import.
_BUILTIN_BACKENDS = {
    "transformer": "smallfit.models.transformer:TransformerClassifier",
    "linear": "smallfit.models.linear:LinearClassifier",
    "static": "smallfit.models.static:StaticClassifier",
    "hf-sequence": "smallfit.models.hf_sequence:HFSequenceClassifier",
    "onnx": "smallfit.models.onnx:OnnxClassifier",
    "decoder": "smallfit.models.decoder:DecoderClassifier",
    "llm": "smallfit.models.llm:LLMClassifier",
    "cascade": "smallfit.route.cascade:Cascade",
}
_REGISTRY: dict[str, type[BaseClassifier]] = {}


def register_backend(kind: str) -> Callable[[C], C]:
    """Class decorator: make ``kind`` loadable by :func:`load`."""

    def decorate(cls: C) -> C:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return decorate


def backend_class(kind: str) -> type[BaseClassifier]:
    """The class registered for ``kind``, importing a built-in backend on first use."""
    if kind not in _REGISTRY and kind in _BUILTIN_BACKENDS:
        module, _, attr = _BUILTIN_BACKENDS[kind].partition(":")
        getattr(importlib.import_module(module), attr)
    if kind not in _REGISTRY:
        known = ", ".join(sorted(set(_REGISTRY) | set(_BUILTIN_BACKENDS)))
        raise SmallfitError(f"unknown model kind '{kind}' (known: {known})")
    return _REGISTRY[kind]


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the model directory ``path``, with a clear error if absent or corrupt."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise SmallfitError(f"{path}: not a smallfit model directory (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SmallfitError(f"{file}: corrupt manifest ({exc})") from exc
    if not isinstance(manifest, dict) or "kind" not in manifest or "labels" not in manifest:
        raise SmallfitError(f"{file}: manifest lacks 'kind' or 'labels'")
    return manifest


def manifest_with_architecture(model_dir: str | Path) -> dict[str, Any]:
    """The manifest; a transformer saved before manifests recorded the architecture gets it
    from its ``config.json`` (unpruned then: every layer at the configured widths)."""
    manifest = read_manifest(model_dir)
    config_file = Path(model_dir) / "config.json"
    legacy = manifest["kind"] == "transformer" and not manifest.get("architecture")
    if legacy and config_file.is_file():
        config = json.loads(config_file.read_text("utf-8"))
        layers = int(config["num_hidden_layers"])
        manifest["architecture"] = {
            "model_type": config["model_type"],
            "layers": layers,
            "hidden": config["hidden_size"],
            "head_dim": config["hidden_size"] // config["num_attention_heads"],
            "attention": [config["hidden_size"]] * layers,
            "ffn": [config["intermediate_size"]] * layers,
            "vocab": config["vocab_size"],
            "num_labels": len(manifest["labels"]),
        }
    return manifest


def load(path: str | Path) -> BaseClassifier:
    """Load any saved smallfit model directory as the right Classifier."""
    directory = Path(path)
    manifest = read_manifest(directory)
    if manifest.get("task") == "extract":
        raise SmallfitError(f"{path}: a field extractor ({manifest['kind']}), not a classifier")
    model = backend_class(manifest["kind"]).load_files(directory, manifest)
    model.bytes_on_disk = dir_bytes(directory)
    return model


M = TypeVar("M", bound=BaseClassifier)


def load_as(path: str | Path, kind: type[M]) -> M:
    """:func:`load`, for a caller that needs a model of class ``kind`` (a step that reads a
    backend's own methods); a SmallfitError when the directory holds another kind of model."""
    model = load(path)
    if not isinstance(model, kind):
        raise SmallfitError(f"{path}: a {model.kind} model, expected {kind.__name__}")
    return model


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically (temp file + rename), so a crash never leaves half a file."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, "utf-8")
    tmp.replace(target)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (see :func:`write_text`)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write a .npy atomically (temp file + rename; parents made), never pickled."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.npy")
    np.save(tmp, array, allow_pickle=False)
    tmp.replace(target)


def dir_bytes(path: str | Path) -> int:
    """Total bytes of the model's files under ``path`` (its model card is documentation)."""
    return sum(
        p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.name != MODEL_CARD
    )


def normalise_rows(probs: np.ndarray) -> np.ndarray:
    """Clip tiny negatives and renormalise rows to sum to 1 (float32)."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    sums = probs.sum(axis=1, keepdims=True)
    sums[sums == 0] = 1.0
    return (probs / sums).astype(np.float32)


def softmax(logits: np.ndarray, *, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float32, rows sum to 1)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return normalise_rows(e / e.sum(axis=1, keepdims=True))


def align_probs(probs: np.ndarray, source: list[str], target: list[str]) -> np.ndarray:
    """Reorder probability columns from ``source`` label order to ``target`` label order."""
    if list(source) == list(target):
        return probs
    missing = sorted(set(target) - set(source))
    extra = sorted(set(source) - set(target))
    if missing or extra:
        raise SmallfitError(
            "label sets differ: "
            f"missing from the source {missing[:10]}, unknown to the target {extra[:10]}"
        )
    index = {label: i for i, label in enumerate(source)}
    return probs[:, [index[label] for label in target]]
