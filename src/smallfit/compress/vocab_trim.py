"""``trim-vocab``: keep the vocabulary your texts use, and shrink the embedding table to match.

An encoder's token embeddings are often half its weights, and a narrow task's texts use a few
thousand of its 30,000 tokens. The step keeps the tokens the training texts tokenize into, the
special tokens, and (by default with ``unseen: spell``) every single-character piece;
optionally also the first ``keep_general`` whole-word tokens of the base vocabulary (BERT's are
in frequency order). Kept tokens take new ids in their old order, so ``[PAD]`` keeps id 0.
The model's embedding rows and the tokenizer's ``tokenizer.json`` (the WordPiece vocabulary,
special-token ids in the post-processor, padding and added tokens) are remapped together, and
the saved model loads with the standard ``transformers``/``tokenizers`` tooling. The position
rows past the model's ``max_length`` go too (``positions``).

What happens to a token never seen in training depends on ``unseen``:

- ``nearest`` (the default): the token's string stays in the tokenizer, mapped to the id of
  the kept token whose embedding row is nearest (cosine; a word to a word, a ``##``
  continuation to a continuation, a character to a character). Words tokenize exactly as
  before, and the model sees a close stand-in for each dropped piece. The tokenizer file keeps
  every string (about 0.4 MB for BERT's); single characters the texts did not use need no rows
  of their own (about 0.7 MB of MiniLM's int8 table).
- ``spell``: the token is gone. WordPiece splits each word into the longest pieces its
  vocabulary has; without the word's own pieces, it falls back to shorter kept pieces, down to
  single characters (kept by default with ``spell``). Only a character the base vocabulary
  lacked as well becomes ``[UNK]``.

Either way no text is refused, but such a token reaches the model as something it was not
trained on: the evaluation reports accuracy separately on the test texts that have one
(``quality.unseen_vocab``), found with the tokenizer of the model the step cut (the step's
``untrimmed_from``) and the mask of kept tokens the step records (``kept``).
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
from smallfit.models.vocab import pack_kept, unseen_rows

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


def stand_ins(
    weight: np.ndarray, vocab: dict[str, int], kept: Sequence[int], skip: set[int]
) -> dict[int, int]:
    """For each token not kept (an old id), the kept token (an old id) whose embedding row is
    nearest by cosine, of the same kind: a word to a word, a ``##`` continuation to a
    continuation, and a single character to a single character where one of its kind is kept.
    Tokens in ``skip`` (the special tokens) and BERT's ``[unusedN]`` placeholders get none."""
    unit = weight / np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12)
    kept_set = set(kept)
    kinds: dict[tuple[bool, bool], list[int]] = {}
    for t, i in vocab.items():
        if i not in skip and not (t.startswith("[") and t.endswith("]")):
            piece = t.removeprefix("##")
            kinds.setdefault((piece != t, len(piece) == 1), []).append(i)
    out: dict[int, int] = {}
    for (continuation, char), group in kinds.items():
        targets = np.array(sorted(i for i in group if i in kept_set))
        if not len(targets):  # no character of its kind kept: any piece of its kind
            wider = kinds.get((continuation, not char), [])
            targets = np.array(sorted(i for i in wider if i in kept_set))
        sources = np.array(sorted(i for i in group if i not in kept_set))
        if not len(targets) or not len(sources):
            continue
        for start in range(0, len(sources), 2048):
            chunk = sources[start : start + 2048]
            best = (unit[chunk] @ unit[targets].T).argmax(1)
            out.update(zip(chunk.tolist(), targets[best].tolist(), strict=True))
    return out


def remap_tokenizer(
    tokenizer_json: dict[str, Any],
    old_to_new: dict[int, int],
    stand_in: dict[int, int] | None = None,
) -> dict[str, Any]:
    """``tokenizer.json`` with the kept tokens at their new ids, and each token of
    ``stand_in`` (old id -> kept old id) at its stand-in's new id; the rest are dropped."""
    out = json.loads(json.dumps(tokenizer_json))
    vocab = out["model"]["vocab"]
    ids = {**{old: old_to_new[kept] for old, kept in (stand_in or {}).items()}, **old_to_new}
    out["model"]["vocab"] = {t: ids[i] for t, i in vocab.items() if i in ids}
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


def cut_positions(model: Any) -> tuple[int, int]:
    """Drop the position rows no input reaches: past the model's ``max_length`` (its tokenizer
    truncates there), counted from where positions start (MPNet's at ``padding_idx + 1``).
    Returns (rows before, rows after)."""
    import torch

    embeddings = model.module.encoder.embeddings
    table = embeddings.position_embeddings
    start = 0 if table.padding_idx is None else table.padding_idx + 1
    have, need = table.num_embeddings, model.max_length + start
    if need >= have:
        return have, have
    embeddings.position_embeddings = torch.nn.Embedding.from_pretrained(
        table.weight.detach()[:need].clone(), freeze=False, padding_idx=table.padding_idx
    )
    for name in ("position_ids", "token_type_ids"):  # buffers as long as the table
        buffer = getattr(embeddings, name, None)
        if isinstance(buffer, torch.Tensor) and buffer.dim() == 2 and buffer.shape[1] == have:
            setattr(embeddings, name, buffer[:, :need].clone())
    model.module.encoder.config.max_position_embeddings = need
    return have, need


@register_step(TrimVocab, precondition=_can_apply)
def _trim_vocab(step: TrimVocab, model_dir: Path, out: Path, ctx: StepContext) -> dict[str, Any]:
    import torch

    model: Any = load(model_dir)
    source_json = json.loads((Path(model_dir) / "tokenizer.json").read_text("utf-8"))
    vocab = _wordpiece(source_json, Path(model_dir))
    texts = ctx.pool_texts()  # the whole training pool, not only the check sample
    keep_chars = step.unseen == "spell" if step.keep_chars is None else step.keep_chars
    kept = kept_ids(
        model.tokenizer, vocab, texts, keep_chars=keep_chars, keep_general=step.keep_general
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
    positions = cut_positions(model) if step.positions else None
    stand_in = None
    if step.unseen == "nearest":
        skip = set(model.tokenizer.all_special_ids)
        stand_in = stand_ins(embeddings.weight.detach().numpy(), vocab, kept, skip)
    model.lineage["vocab_trim"] = {"kept": len(kept), "of": len(vocab), "texts": len(texts)}
    model.save(out)
    (out / "tokenizer.json").write_text(
        json.dumps(remap_tokenizer(source_json, old_to_new, stand_in), ensure_ascii=False),
        "utf-8",
    )

    trimmed: Any = load(out)  # through the saved files: the remapped tokenizer included
    after = trimmed.predict_proba(check)
    mask = np.zeros(max(vocab.values()) + 1, dtype=bool)
    mask[kept] = True
    unseen = unseen_rows(Path(model_dir) / "tokenizer.json", out, check, kept=mask)
    return {
        "vocab": len(kept),
        "vocab_before": len(vocab),
        "unseen": step.unseen,
        "positions": positions[1] if positions else None,
        "positions_before": positions[0] if positions else None,
        "stand_ins": len(stand_in or {}),
        "kept": pack_kept(mask),
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
