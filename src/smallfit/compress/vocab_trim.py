"""``trim-vocab``: keep the vocabulary your texts use, and shrink the embedding table to match.

An encoder's token embeddings are often half its weights, and a narrow task's texts use a few
thousand of its 30,000 tokens. The step keeps the tokens the training texts tokenize into, the
special tokens, and (by default) every single-character piece; optionally also the first
``keep_general`` whole-word tokens of the base vocabulary (BERT's are in frequency order).
Kept tokens take new ids in their old order, so ``[PAD]`` keeps id 0. The model's embedding
rows and the tokenizer's ``tokenizer.json`` (the WordPiece vocabulary, special-token ids in
the post-processor, padding and added tokens) are remapped together, and the saved model loads
with the standard ``transformers``/``tokenizers`` tooling.

What happens to a token never seen in training: WordPiece splits each word into the longest
pieces its vocabulary has. Without the word's own pieces, it falls back to shorter kept
pieces, down to single characters (kept by default); only a character the base vocabulary
lacked as well becomes ``[UNK]``. So no text is refused, but such a word reaches the model as
pieces it was not trained on: the evaluation reports accuracy separately on the test texts
that have one (``quality.unseen_vocab``), found with the tokenizer of the model the step cut
(the step's ``untrimmed_from``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.compress.base import StepContext, register_step
from smallfit.compress.steps import TrimVocab
from smallfit.errors import SmallfitError
from smallfit.models.base import load
from smallfit.models.vocab import unseen_rows

WORDPIECE_FAMILIES = ("bert", "mpnet")
"""Encoders whose tokenizer is WordPiece (MiniLM is a BERT)."""


def _can_apply(step: TrimVocab, manifest: dict[str, Any]) -> dict[str, Any]:
    if manifest["kind"] != "transformer":
        raise SmallfitError(
            f"trim-vocab applies to PyTorch transformer models; this one is '{manifest['kind']}' "
            "(run it before 'onnx')"
        )
    family = (manifest.get("architecture") or {}).get("model_type")
    if family not in WORDPIECE_FAMILIES:
        raise SmallfitError(
            f"trim-vocab supports WordPiece encoders ({', '.join(WORDPIECE_FAMILIES)}); this one "
            f"is '{family}'"
        )
    return manifest


def _wordpiece(tokenizer_json: dict[str, Any], where: Path) -> dict[str, int]:
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "WordPiece":
        raise SmallfitError(
            f"{where}/tokenizer.json: trim-vocab supports WordPiece tokenizers (BERT, MPNet, "
            f"MiniLM); this one is {model.get('type')!r}"
        )
    return dict(model["vocab"])


def kept_ids(
    tokenizer: Any,
    vocab: dict[str, int],
    texts: Sequence[str],
    *,
    keep_chars: bool,
    keep_general: int,
) -> list[int]:
    """The old ids that remain, ascending: the texts' tokens, the special tokens, single
    characters (``a``, ``##a``) when ``keep_chars``, and the first ``keep_general`` whole
    words."""
    keep: set[int] = set(tokenizer.all_special_ids)
    for start in range(0, len(texts), 1024):
        batch = tokenizer(list(texts[start : start + 1024]), add_special_tokens=False)
        for ids in batch["input_ids"]:
            keep.update(ids)
    prefix = "##"
    if keep_chars:
        keep.update(i for t, i in vocab.items() if len(t.removeprefix(prefix)) == 1)
    if keep_general:
        specials = set(tokenizer.all_special_tokens)
        words = sorted(
            (i, t)
            for t, i in vocab.items()
            if len(t) > 1
            and not t.startswith(prefix)
            and t not in specials
            and not (t.startswith("[") and t.endswith("]"))
        )
        keep.update(i for i, _ in words[:keep_general])
    return sorted(keep)


def remap_tokenizer(tokenizer_json: dict[str, Any], old_to_new: dict[int, int]) -> dict[str, Any]:
    """``tokenizer.json`` with only the kept tokens, at their new ids."""
    out = json.loads(json.dumps(tokenizer_json))
    vocab = out["model"]["vocab"]
    out["model"]["vocab"] = {t: old_to_new[i] for t, i in vocab.items() if i in old_to_new}
    out["added_tokens"] = [
        {**a, "id": old_to_new[a["id"]]}
        for a in out.get("added_tokens", [])
        if a["id"] in old_to_new
    ]
    post = out.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [old_to_new[i] for i in spec["ids"]]
    for key in ("cls", "sep"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(post.get(key), list):
            post[key] = [post[key][0], old_to_new[post[key][1]]]
    padding = out.get("padding")
    if padding and "pad_id" in padding:
        padding["pad_id"] = old_to_new[padding["pad_id"]]
    return out


@register_step(TrimVocab, precondition=_can_apply)
def _trim_vocab(step: TrimVocab, model_dir: Path, out: Path, ctx: StepContext) -> dict[str, Any]:
    import torch

    model: Any = load(model_dir)
    source_json = json.loads((Path(model_dir) / "tokenizer.json").read_text("utf-8"))
    vocab = _wordpiece(source_json, Path(model_dir))
    texts = ctx.pool_texts()  # the whole training pool, not only the check sample
    kept = kept_ids(
        model.tokenizer, vocab, texts, keep_chars=step.keep_chars, keep_general=step.keep_general
    )
    old_to_new = {old: new for new, old in enumerate(kept)}
    check = ctx.check_texts[:256]
    before = model.predict_proba(check)

    embeddings = model.module.encoder.embeddings.word_embeddings
    rows = embeddings.weight.detach()[torch.tensor(kept)].clone()
    config = model.module.encoder.config
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        old = getattr(config, name, None)
        if isinstance(old, int):
            setattr(config, name, old_to_new.get(old))
    model.module.encoder.embeddings.word_embeddings = torch.nn.Embedding.from_pretrained(
        rows, freeze=False, padding_idx=config.pad_token_id
    )
    config.vocab_size = len(kept)
    model.lineage["vocab_trim"] = {"kept": len(kept), "of": len(vocab), "texts": len(texts)}
    model.save(out)
    (out / "tokenizer.json").write_text(
        json.dumps(remap_tokenizer(source_json, old_to_new), ensure_ascii=False), "utf-8"
    )

    trimmed: Any = load(out)  # through the saved files: the remapped tokenizer included
    after = trimmed.predict_proba(check)
    unseen = unseen_rows(Path(model_dir) / "tokenizer.json", out, check)
    return {
        "vocab": len(kept),
        "vocab_before": len(vocab),
        # the first step's model: its tokenizer is the untrimmed one (a step before this one
        # does not change the tokenizer), and it outlives this step's scratch space
        "untrimmed_from": str(ctx.source or Path(model_dir).resolve()),
        "embedding_parameters": int(rows.numel()),
        "embedding_parameters_before": int(embeddings.weight.numel()),
        "texts": len(texts),
        "argmax_agreement": float((after.argmax(1) == before.argmax(1)).mean()),
        "max_abs_prob_diff_seen": float(
            np.abs(after - before)[~unseen].max() if (~unseen).any() else 0.0
        ),
        "check_texts": len(check),
        "check_texts_with_unseen_tokens": int(unseen.sum()),
        "parameters": trimmed.num_parameters,
    }
