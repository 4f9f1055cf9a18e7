"""Training a token tagger on spans (gold, or a teacher's answers aligned to the text): cross
entropy over BIO tags on every real token, in the shared loop of
:mod:`smallfit.train.token_loop`. What it reports goes into the model's lineage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.fields import Span
from smallfit.models.tagger import IGNORE, TokenTagger, token_targets, whole_words
from smallfit.train.config import TrainConfig
from smallfit.train.token_loop import train_on_tokens


def _freeze(tagger: TokenTagger, train: TrainConfig) -> None:
    base = tagger.module.base_model
    if train.freeze_embeddings or train.freeze_layers:
        for p in base.embeddings.parameters():
            p.requires_grad_(False)
    for layer in base.encoder.layer[: train.freeze_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)


def train_tagger(
    tagger: TokenTagger,
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    train: TrainConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``tagger`` in place on ``texts`` with their ``spans``; returns what happened
    (steps, epochs, loss, seconds, why it stopped), also written to its lineage."""
    import torch

    torch.manual_seed(train.seed)
    enc = tagger.tokenizer(
        list(texts), truncation=True, max_length=tagger.max_length, return_offsets_mapping=True
    )
    ids = enc["input_ids"]
    if not ids:
        raise SmallfitError(f"{tagger.name}: no texts to train on")
    targets = [
        token_targets(off, whole_words(text, sp), tagger.tags)
        for text, off, sp in zip(texts, enc["offset_mapping"], spans, strict=True)
    ]
    module = tagger.module
    _freeze(tagger, train)
    head = [p for n, p in module.named_parameters() if p.requires_grad and "classifier" in n]
    body = [p for n, p in module.named_parameters() if p.requires_grad and "classifier" not in n]
    groups = [
        {"params": body, "lr": train.lr},
        {"params": head, "lr": train.head_lr or 20 * train.lr},
    ]

    def loss(x: Any, mask: Any, y: Any) -> Any:
        logits = module(input_ids=x, attention_mask=mask).logits
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE
        )

    report = train_on_tokens(
        module,
        groups,
        ids,
        targets,
        train,
        pad=tagger.tokenizer.pad_token_id or 0,
        loss=loss,
        name=tagger.name,
        progress=progress,
    )
    for p in module.parameters():
        p.requires_grad_(True)
    tagger.lineage["training"] = report
    if log is not None:
        steps, seconds, final = report["steps"], report["seconds"], report["train_loss"]
        log(f"{tagger.name}: {steps} steps in {seconds}s, loss {final}")
    return report
