"""Training a token tagger on spans (gold, or a teacher's answers aligned to the text): cross
entropy over BIO tags on every real token, AdamW with a linear warm-up and decay, bf16
autocast, seeded data order. What it reports goes into the model's lineage."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.fields import Span
from smallfit.models.tagger import IGNORE, TokenTagger, token_targets
from smallfit.schema import parse_duration
from smallfit.train.config import TrainConfig


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
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    started = time.perf_counter()
    torch.manual_seed(train.seed)
    enc = tagger.tokenizer(
        list(texts), truncation=True, max_length=tagger.max_length, return_offsets_mapping=True
    )
    ids = enc["input_ids"]
    if not ids:
        raise SmallfitError(f"{tagger.name}: no texts to train on")
    targets = [
        token_targets(off, sp, tagger.tags)
        for off, sp in zip(enc["offset_mapping"], spans, strict=True)
    ]
    module = tagger.module.train()
    _freeze(tagger, train)
    head = [p for n, p in module.named_parameters() if p.requires_grad and "classifier" in n]
    body = [p for n, p in module.named_parameters() if p.requires_grad and "classifier" not in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": body, "lr": train.lr},
            {"params": head, "lr": train.head_lr or 20 * train.lr},
        ],
        weight_decay=train.weight_decay,
    )
    schedule = train.schedule(len(ids))
    steps = schedule.steps
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(train.warmup_ratio * steps), steps
    )
    budget = parse_duration(train.time_budget) if train.time_budget else None
    rng = np.random.default_rng(train.seed)
    pad = tagger.tokenizer.pad_token_id or 0
    done, losses, stopped = 0, [], "epochs"
    bar = tqdm(total=steps, desc=f"train {tagger.name}", disable=not progress, unit="step")
    while done < steps:
        order = rng.permutation(len(ids))
        for b in range(0, len(order), train.batch_size):
            rows = order[b : b + train.batch_size]
            width = max(len(ids[i]) for i in rows)
            x = torch.full((len(rows), width), pad, dtype=torch.long)
            y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                n = len(ids[i])
                x[r, :n] = torch.tensor(ids[i])
                y[r, :n] = torch.tensor(targets[i])
                mask[r, :n] = 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=train.bf16):
                logits = module(input_ids=x, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if done >= steps:
                break
            if budget is not None and time.perf_counter() - started > budget:
                stopped = "time_budget"
                break
        if stopped != "epochs":
            break
    bar.close()
    module.eval()
    for p in module.parameters():
        p.requires_grad_(True)
    report = {
        "steps": done,
        "epochs": round(done / max(1, schedule.steps_per_epoch), 3),
        "schedule": schedule.describe(),
        "train_loss": round(float(np.mean(losses[-50:])), 5) if losses else None,
        "seconds": round(time.perf_counter() - started, 1),
        "stopped_by": stopped,
        "config": train.model_dump(mode="json"),
    }
    tagger.lineage["training"] = report
    if log is not None:
        log(f"{tagger.name}: {done} steps in {report['seconds']}s, loss {report['train_loss']}")
    return report
