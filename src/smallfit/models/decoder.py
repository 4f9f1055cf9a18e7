"""A causal LM (LLaMA-class decoder) as a sequence classifier, fine-tuned with LoRA.

The base is any transformers causal LM (:func:`smallfit.zoo.resolve_causal_lm`: the zoo's
``smollm2-135m`` GGUF file, a HF directory, a ``.gguf`` file, a Hub id), loaded as
``AutoModelForSequenceClassification``: the classification head (``score``) reads the hidden state
of the last real token, so the pad token (the EOS token when the tokenizer has none) must be
known to the model config. peft wraps it with LoRA adapters; the head trains in full (peft's
``modules_to_save``).

Each text is wrapped in a prompt (``{text}`` marks its place) before the model sees it. With an
instruct model's chat format, the last token is where the model would start its answer, and its
state holds far more about the text than the state after the text's own last word: on SNIPS with
16 texts per label, a linear probe on SmolLM2's last-token state reaches 79% test accuracy with
the chat prompt and 54% on the bare text. Only the text is truncated (to ``max_length`` tokens);
the prompt around it is always kept whole.

On disk a decoder student is small: the adapter (``adapter_config.json``,
``adapter_model.safetensors``, holding the LoRA matrices and the head), the tokenizer files and
the manifest, which names the base and pins its weights by sha256. The base weights are never
copied into the model directory and nothing is pickled. Loading rebuilds the base and applies the
adapter; a base that is missing, or whose weights differ from the ones the adapter was trained
on, is a :class:`~smallfit.errors.SmallfitError`.

A GGUF base is dequantised by transformers (fp32), which takes ~25 s for SmolLM2-135M (parsing
the GGUF metadata and tokenizer dominates). So the first use converts it once into a HF directory
in the zoo cache (``<cache>/models/<gguf stem>-<sha256[:12]>``, config + tokenizer + fp32
safetensors, bit-identical to a direct GGUF load), keyed by the GGUF file's sha256; later loads
take about a second. Concurrent first uses are safe (a file lock, a temporary directory renamed
into place with a checksum marker written last).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from smallfit import zoo
from smallfit.errors import SmallfitError
from smallfit.models.base import register_backend
from smallfit.models.transformer import TorchClassifier
from smallfit.weights import build_once

if TYPE_CHECKING:  # peft is imported where it is used
    from peft import LoraConfig, PeftModel

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TEXT = "{text}"
"""Where the text goes in a prompt."""
CONVERTED_MARKER = ".smallfit-converted"
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def base_name(base: str) -> str:
    """How the manifest names a base: zoo aliases and Hub ids as given, local paths absolute."""
    if base in zoo.ALIASES:
        return base
    local = Path(base).expanduser()
    return str(local.resolve()) if local.exists() else base


def hf_directory(base: zoo.CausalLM, sha256: str) -> Path:
    """A HF directory holding the base's config, tokenizer and weights: the base's own
    directory, or for a GGUF file its fp32 conversion in the zoo cache (made once)."""
    if base.gguf_file is None:
        return base.directory
    target = zoo.cache_dir() / "models" / f"{Path(base.gguf_file).stem}-{sha256[:12]}"
    return build_once(
        target,
        checksum=sha256,
        build=lambda out: _convert_gguf(base, out),
        marker=CONVERTED_MARKER,
    )


def _convert_gguf(base: zoo.CausalLM, out: Path) -> None:
    """Dequantise a GGUF causal LM with transformers and save it as a plain HF directory."""
    from transformers import AutoModelForCausalLM

    where = base.directory / str(base.gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base.directory), **base.pretrained_kwargs())
        model = AutoModelForCausalLM.from_pretrained(
            str(base.directory), dtype=torch.float32, **base.pretrained_kwargs()
        )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise SmallfitError(f"{where}: transformers cannot load this GGUF file ({exc})") from exc
    # The weights are dequantised fp32 now; drop the GGUF quantizer so they save as plain
    # safetensors (transformers refuses to serialise a model it believes is quantized).
    # nn.Module.__setattr__ is typed for tensors and modules only; this is a plain attribute.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def with_lora(
    model: Any, task_type: str, r: int, alpha: int, dropout: float, targets: Sequence[str]
) -> Any:
    """``model`` wrapped by peft with new LoRA adapters on the ``targets`` layers."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType[task_type],
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. a target module the architecture does not have
        raise SmallfitError(f"lora.target_modules={list(targets)}: {exc}") from exc


def _sequence_model(directory: Path, *, labels: list[str], pad_token_id: int) -> nn.Module:
    model = AutoModelForSequenceClassification.from_pretrained(
        str(directory),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=pad_token_id,
        dtype=torch.float32,
    )
    model.config.use_cache = False  # one forward pass per text: a KV cache is pure overhead
    return model


def _tokenizer(directory: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SmallfitError(f"{directory}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    # The head reads the last non-pad token; right padding keeps positions starting at 0.
    tokenizer.padding_side = "right"
    return tokenizer


@register_backend("decoder")
class DecoderClassifier(TorchClassifier):
    """A peft-wrapped ``*ForSequenceClassification`` causal LM with its tokenizer.

    ``base`` records the base for the manifest: ``name`` (alias, path or Hub id), ``gguf_file``
    and ``sha256`` of its weights, and its shape."""

    module: PeftModel

    def __init__(
        self,
        module: PeftModel,
        tokenizer: Any,
        *,
        labels: list[str],
        name: str,
        base: dict[str, Any],
        prompt: str = TEXT,
        max_length: int = 64,
        lineage: dict[str, Any] | None = None,
        temperature: float = 1.0,
    ) -> None:
        if prompt.count(TEXT) != 1:
            raise SmallfitError(f"the prompt must hold {TEXT} exactly once, got {prompt!r}")
        super().__init__(
            module,
            tokenizer,
            labels=labels,
            name=name,
            max_length=max_length,
            lineage=lineage,
            temperature=temperature,
        )
        self.base = dict(base)
        self.prompt = prompt
        before, _, after = prompt.partition(TEXT)
        # Specials (a BOS token, for models that use one) go before the prompt, never inside.
        self._before = list(tokenizer(before)["input_ids"])
        self._after = list(tokenizer(after, add_special_tokens=False)["input_ids"])
        if self._after and self._after[-1] == tokenizer.pad_token_id:
            raise SmallfitError(
                f"the prompt {prompt!r} ends with the pad token {tokenizer.pad_token!r}: the head "
                "reads the last token that is not padding, so end it with something else"
            )

    @classmethod
    def from_base(
        cls,
        base: str,
        *,
        labels: list[str],
        name: str,
        lora_r: int,
        lora_alpha: int,
        lora_dropout: float,
        lora_targets: Sequence[str],
        prompt: str = TEXT,
        max_length: int = 64,
        lineage: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> DecoderClassifier:
        """A fresh student: the base with new LoRA adapters and a new head (seeded)."""

        files = zoo.resolve_causal_lm(base)
        sha256 = files.sha256()
        directory = hf_directory(files, sha256)
        tokenizer = _tokenizer(directory)
        torch.manual_seed(seed)
        model = _sequence_model(directory, labels=labels, pad_token_id=tokenizer.pad_token_id)
        # SEQ_CLS also keeps the head (`score`) trainable and saved
        module = with_lora(model, "SEQ_CLS", lora_r, lora_alpha, lora_dropout, lora_targets)
        record = {"name": base_name(base), "gguf_file": files.gguf_file, "sha256": sha256}
        return cls(
            module,
            tokenizer,
            labels=labels,
            name=name,
            base={**record, **_shape(model.config)},
            prompt=prompt,
            max_length=max_length,
            lineage=lineage,
        )

    # ------------------------------------------------------------------ tokens

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's tokens (at most ``max_length``) inside the prompt's, unpadded."""
        ids = self.tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=self.max_length
        )["input_ids"]
        return [[*self._before, *row, *self._after] for row in ids]

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """:meth:`encode`, right-padded: the mask marks the real tokens (the pad id may occur
        inside a prompt, e.g. ChatML's end-of-turn, so it is never inferred from the ids)."""
        rows = self.encode(texts)
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # ------------------------------------------------------------------ what training needs

    @property
    def num_parameters(self) -> int:
        """Base + adapters + head (peft's frozen copy of the original head not counted)."""
        return sum(
            p.numel() for n, p in self.module.named_parameters() if "original_module" not in n
        )

    def head(self) -> nn.Linear:
        # The head (``score``, a Linear) inside peft's ModulesToSaveWrapper, reached by name.
        wrapper: Any = self._base_model().score
        return wrapper.modules_to_save[self.module.active_adapter]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Hidden state of each text's last token after the final norm: what ``score`` reads."""
        base = self._base_model()
        body = getattr(base, base.base_model_prefix)

        def last_token(enc: dict[str, torch.Tensor]) -> torch.Tensor:
            hidden = body(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            ).last_hidden_state
            last = enc["attention_mask"].sum(dim=1) - 1  # right padding
            return hidden[torch.arange(hidden.shape[0]), last]

        return self._run(texts, self.head().in_features, last_token)

    def prepare_training(self, *, freeze_embeddings: bool, freeze_layers: int) -> None:
        """The base is frozen already (only adapters and head train); ``freeze_layers`` also
        fixes the adapters of the bottom layers. Unmerges adapters merged for inference."""
        self._unmerge()
        if freeze_layers == 0:
            return
        layers = int(self._base_model().config.num_hidden_layers)
        if freeze_layers > layers:
            raise SmallfitError(f"train.freeze_layers={freeze_layers}, but the base has {layers}")
        for name, param in self.module.named_parameters():
            found = _LAYER_INDEX.search(name)
            if "lora_" in name and found and int(found[1]) < freeze_layers:
                param.requires_grad_(False)

    def _base_model(self) -> PreTrainedModel:
        # peft types it nn.Module; it is the *ForSequenceClassification of _sequence_model.
        return cast(PreTrainedModel, self.module.get_base_model())

    # ------------------------------------------------------------------ inference

    # Adapters are merged into the base weights before inference: batch-1 p50 on SNIPS, SmolLM2
    # with r=8 on q_proj/v_proj, interleaved on 2 cores: 94.8 vs 99.0 ms (1 thread) and 73.5 vs
    # 80.1 ms (2 threads) merged vs unmerged, answers equal to 1e-6. The gap grows with more
    # target modules: unmerged, every adapted layer runs two extra small matmuls. Merging adds
    # the same B @ A * scale on every load, so a loaded model gives exactly the probabilities of
    # the one that was saved.
    def _merge(self) -> None:
        if not self._merged():
            with torch.no_grad():
                self.module.merge_adapter()

    def _unmerge(self) -> None:
        if self._merged():
            with torch.no_grad():
                self.module.unmerge_adapter()

    def _merged(self) -> bool:
        return any(getattr(m, "merged", False) for m in self.module.modules())

    def _run(
        self,
        texts: Sequence[str],
        width: int,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    ) -> np.ndarray:
        self._merge()
        return super()._run(texts, width, fn)

    # ------------------------------------------------------------------ files

    def save_files(self, path: Path) -> dict[str, Any]:
        # peft types it PeftConfig; a decoder student's adapter is always LoRA (from_base).
        config = cast("LoraConfig", self.module.peft_config[self.module.active_adapter])
        config.base_model_name_or_path = self.base["name"]
        # adapter_config.json + adapter_model.safetensors; the embeddings never train, so
        # peft need not check (on the Hub, for a name like ours) whether they changed.
        self.module.save_pretrained(str(path), save_embedding_layers=False)
        (path / "README.md").unlink(missing_ok=True)  # peft's model-card template
        self.tokenizer.save_pretrained(str(path))
        return {
            "max_length": self.max_length,
            "temperature": self.temperature,
            "prompt": self.prompt,
            "base": self.base,
            "lora": {
                "r": config.r,
                "alpha": config.lora_alpha,
                "dropout": config.lora_dropout,
                # peft types it list | str | None, but keeps the list it was given as a set.
                "target_modules": sorted(cast("set[str]", config.target_modules)),
            },
            "merged_at_load": True,
        }

    @classmethod
    def load_files(cls, path: Path, manifest: dict[str, Any]) -> DecoderClassifier:
        from peft import PeftModel

        record = manifest.get("base") or {}
        if not record.get("name") or not record.get("sha256"):
            raise SmallfitError(f"{path}/smallfit.json: 'base' lacks 'name' or 'sha256'")
        missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
        if missing:
            raise SmallfitError(f"{path}: decoder student without {', '.join(missing)}")
        files = _checked_base(path, record)
        directory = hf_directory(files, record["sha256"])
        tokenizer = _tokenizer(path)
        labels = list(manifest["labels"])
        model = _sequence_model(directory, labels=labels, pad_token_id=tokenizer.pad_token_id)
        module = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        loaded = cls(
            module,
            tokenizer,
            labels=labels,
            name=manifest.get("name", path.name),
            base=record,
            prompt=str(manifest.get("prompt", TEXT)),
            max_length=int(manifest.get("max_length", 64)),
            lineage=manifest.get("lineage", {}),
            temperature=float(manifest.get("temperature", 1.0)),
        )
        loaded._merge()
        return loaded


def _checked_base(path: Path, record: dict[str, Any]) -> zoo.CausalLM:
    """The base named in the manifest, with weights of the recorded sha256."""
    name = str(record["name"])
    try:
        files = zoo.resolve_causal_lm(name)
    except SmallfitError as exc:
        raise SmallfitError(
            f"{path}: cannot find the base '{name}' of this student: {exc}"
        ) from exc
    if record.get("gguf_file") and files.gguf_file != record["gguf_file"]:
        raise SmallfitError(
            f"{path}: the base '{name}' is now {files.gguf_file or 'a HF directory'}, but the "
            f"student was trained on {record['gguf_file']}"
        )
    actual = files.sha256()
    if actual != record["sha256"]:
        weights = ", ".join(str(f) for f in files.weights)
        raise SmallfitError(
            f"{path}: the base '{name}' ({weights}) has sha256 {actual}, but this student's "
            f"adapter was trained on sha256 {record['sha256']} (smallfit.json: base.sha256). "
            "Install the base it was trained on, or retrain the student."
        )
    return files


def _shape(config: Any) -> dict[str, Any]:
    return {
        "model_type": config.model_type,
        "layers": int(config.num_hidden_layers),
        "hidden": int(config.hidden_size),
        "vocab": int(config.vocab_size),
    }
