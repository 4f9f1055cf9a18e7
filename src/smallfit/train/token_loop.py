"""The training loop shared by the token-level trainers (the tagger's BIO tags, the generative
extractor's answer tokens): seeded batches of token ids with a target per token (``IGNORE`` where
there is none), grouped by length as the classifier's Trainer groups them, padded on the right,
AdamW with a linear warm-up and decay, bf16 autocast, gradient clipping, a time budget.
What it reports goes into the model's lineage."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from smallfit.models.precision import bf16_native
from smallfit.schema import parse_duration
from smallfit.train.config import TrainConfig

IGNORE = -100
"""The target of a token that is not learned (special tokens, a prompt)."""
MEGABATCH = 50
"""Batches per length group (Hugging Face's ``LengthGroupedSampler`` uses 50 too)."""


def length_grouped(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch's batches: a seeded shuffle cut into groups of ``MEGABATCH`` batches, each
    group sorted by length (longest first) and cut into batches, and the batches shuffled. Every
    text comes once per epoch, as with plain shuffling, but a batch holds texts of about one
    length, so little of it is padding (SNIPS with MPNet's tokenizer: 1.81 padded tokens per real
    one in random batches, 1.03 grouped)."""
    order = rng.permutation(len(lengths))
    size = MEGABATCH * batch_size
    batches: list[np.ndarray] = []
    for g in range(0, len(order), size):
        group = order[g : g + size]
        group = group[np.argsort([-lengths[i] for i in group], kind="stable")]
        batches += [group[b : b + batch_size] for b in range(0, len(group), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train_on_tokens(
    module: Any,
    groups: list[dict[str, Any]],
    ids: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    train: TrainConfig,
    *,
    pad: int,
    loss: Callable[[Any, Any, Any], Any],
    name: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``module`` (its parameter ``groups`` as AdamW takes them) on ``ids`` with their
    per-token ``targets``; ``loss(input_ids, attention_mask, targets)`` is one batch's loss.
    Returns what happened: steps, epochs, loss, seconds, why it stopped."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    started = time.perf_counter()
    optimizer = torch.optim.AdamW(groups, weight_decay=train.weight_decay)
    schedule = train.schedule(len(ids))
    steps = schedule.steps
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(train.warmup_ratio * steps), steps
    )
    budget = parse_duration(train.time_budget) if train.time_budget else None
    rng = np.random.default_rng(train.seed)
    params = [p for g in groups for p in g["params"]]
    bf16 = train.bf16 and bf16_native()
    done, losses, stopped = 0, [], "epochs"
    module.train()
    bar = tqdm(total=steps, desc=f"train {name}", disable=not progress, unit="step")
    lengths = [len(row) for row in ids]
    while done < steps:
        for rows in length_grouped(lengths, train.batch_size, rng):
            width = max(len(ids[i]) for i in rows)
            x = torch.full((len(rows), width), pad, dtype=torch.long)
            y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                n = len(ids[i])
                x[r, :n] = torch.tensor(ids[i])
                y[r, :n] = torch.tensor(targets[i])
                mask[r, :n] = 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                value = loss(x, mask, y)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(value.item())
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
    return {
        "steps": done,
        "epochs": round(done / max(1, schedule.steps_per_epoch), 3),
        "schedule": schedule.describe(),
        "train_loss": round(float(np.mean(losses[-50:])), 5) if losses else None,
        "seconds": round(time.perf_counter() - started, 1),
        "stopped_by": stopped,
        "config": train.model_dump(mode="json"),
    }
