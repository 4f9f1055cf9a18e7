"""Fine-tuning a causal LM with LoRA to write a document's fields as JSON: the prompt around the
text, then the answer (:func:`smallfit.models.json_answer.answer_text`) and the end-of-sequence
token; the loss is on the answer's tokens only. The adapters are merged into the base and the
result saved as a plain transformers directory, which llama.cpp's converter turns into GGUF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.train.config import TrainConfig
from smallfit.train.token_loop import IGNORE, train_on_tokens

TEXT = "{text}"


def prompt_ids(tokenizer: Any, prompt: str, text: str, max_length: int) -> list[int]:
    """The prompt's tokens around ``text``'s own, which are cut at ``max_length`` (each part
    tokenized alone, as llama.cpp's side does; special-token text inside ``text`` stays text)."""
    before, _, after = prompt.partition(TEXT)
    body = _ids(tokenizer, text, plain=True)[:max_length]
    return [*_ids(tokenizer, before), *body, *_ids(tokenizer, after)]


def _ids(tokenizer: Any, part: str, *, plain: bool = False) -> list[int]:
    """``part``'s tokens; ``plain``: text such as ``<|im_end|>`` is not a special token."""
    encoded = tokenizer(part, add_special_tokens=False, split_special_tokens=plain)
    out: list[int] = encoded["input_ids"]
    return out


def train_generator(
    base: str,
    texts: Sequence[str],
    answers: Sequence[str],
    train: TrainConfig,
    *,
    out_dir: Path,
    prompt: str,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    lora_targets: Sequence[str],
    name: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Train LoRA adapters of ``base`` (a causal LM: zoo alias, ``.gguf`` file, HF directory)
    on (text, answer) pairs, merge them and save the merged model and its tokenizer in
    ``out_dir``. Returns the training report, with the longest answer in tokens and the base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smallfit import zoo
    from smallfit.models.decoder import base_name, hf_directory, with_lora

    if not texts:
        raise SmallfitError(f"{name}: no texts to train on")
    files = zoo.resolve_causal_lm(base)
    sha256 = files.sha256()
    directory = hf_directory(files, sha256)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if tokenizer.eos_token_id is None:
        raise SmallfitError(f"{base}: the tokenizer has no end-of-sequence token to stop on")
    ids, targets, longest = [], [], 0
    for text, answer in zip(texts, answers, strict=True):
        head = prompt_ids(tokenizer, prompt, text, train.max_length)
        tail = [*_ids(tokenizer, answer, plain=True), tokenizer.eos_token_id]
        longest = max(longest, len(tail))
        ids.append(head + tail)
        targets.append([IGNORE] * len(head) + tail)
    torch.manual_seed(train.seed)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    model.config.use_cache = False
    module = with_lora(model, "CAUSAL_LM", lora_r, lora_alpha, lora_dropout, lora_targets)
    params = [p for p in module.parameters() if p.requires_grad]

    def loss(x: Any, mask: Any, y: Any) -> Any:
        return module(input_ids=x, attention_mask=mask, labels=y).loss

    report = train_on_tokens(
        module,
        [{"params": params, "lr": train.lr}],
        ids,
        targets,
        train,
        pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        loss=loss,
        name=name,
        progress=progress,
    )
    merged: Any = module.merge_and_unload()
    merged.config.use_cache = True
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return {
        **report,
        "longest_answer_tokens": longest,
        "examples": len(ids),
        "base": {"name": base_name(base), "gguf_file": files.gguf_file, "sha256": sha256},
        "lora": {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout},
        "lora_targets": list(lora_targets),
        "trainable_parameters": int(sum(p.numel() for p in params)),
    }
