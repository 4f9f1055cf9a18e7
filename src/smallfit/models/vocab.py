"""A trimmed vocabulary's blind spot: which texts hold a token the trimmed model dropped (see
:mod:`smallfit.compress.vocab_trim`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smallfit.models.base import read_manifest


def untrimmed_tokenizer(model_dir: Path) -> Path | None:
    """The tokenizer a trimmed model's vocabulary was cut from: that of the model its
    ``trim-vocab`` step cut (None: never trimmed, or that model is gone)."""
    steps = read_manifest(model_dir).get("lineage", {}).get("compression", [])
    cuts = [s for s in steps if s.get("method") == "trim-vocab"]
    source = cuts[0].get("metrics", {}).get("untrimmed_from") if cuts else None
    if not source:
        return None
    path = Path(source) / "tokenizer.json"
    return path if path.is_file() else None


def unseen_rows(untrimmed: Path, model_dir: Path, texts: Sequence[str]) -> np.ndarray:
    """Which ``texts`` hold a token (by the ``untrimmed`` tokenizer.json) that the trimmed
    model in ``model_dir`` dropped."""
    from tokenizers import Tokenizer

    before = Tokenizer.from_file(str(untrimmed))
    kept = set(
        json.loads((Path(model_dir) / "tokenizer.json").read_text("utf-8"))["model"]["vocab"]
    )
    rows = before.encode_batch(list(texts), add_special_tokens=False)
    return np.array([any(t not in kept for t in r.tokens) for r in rows], dtype=bool)
