"""A trimmed vocabulary's blind spot: which texts hold a token the trimmed model dropped (see
:mod:`smallfit.compress.vocab_trim`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.models.base import read_manifest


def _cut(model_dir: Path) -> dict[str, Any] | None:
    """The metrics of the ``trim-vocab`` step in a model's lineage (None: never trimmed)."""
    steps = read_manifest(model_dir).get("lineage", {}).get("compression", [])
    cuts = [s for s in steps if s.get("method") == "trim-vocab"]
    return dict(cuts[0].get("metrics") or {}) if cuts else None


def untrimmed_tokenizer(model_dir: Path) -> Path | None:
    """The tokenizer a trimmed model's vocabulary was cut from: that of the model its
    ``trim-vocab`` step cut (None: never trimmed, or that model is gone). The step records
    that model's absolute path; a sibling of ``model_dir`` by that name comes first (a run keeps
    its models side by side in ``models/``), so a run directory moved or copied elsewhere reads
    its own copy, not the original's, which may be gone."""
    source = (_cut(model_dir) or {}).get("untrimmed_from")
    if not source:
        return None
    for folder in (Path(model_dir).parent / Path(source).name, Path(source)):
        path = folder / "tokenizer.json"
        if path.is_file():
            return path
    return None


def pack_kept(mask: np.ndarray) -> str:
    """A kept-token mask over the untrimmed vocabulary as a short string (a bit a token)."""
    return base64.b64encode(np.packbits(mask.astype(bool)).tobytes()).decode("ascii")


def unpack_kept(packed: str) -> np.ndarray:
    """:func:`pack_kept` undone (padded with False to a multiple of 8)."""
    return np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8)).astype(bool)


def unseen_rows(
    untrimmed: Path, model_dir: Path, texts: Sequence[str], *, kept: np.ndarray | None = None
) -> np.ndarray:
    """Which ``texts`` hold a token (by the ``untrimmed`` tokenizer.json) that the trimmed
    model in ``model_dir`` dropped or stands in for with another token's row. ``kept``: the
    mask of kept untrimmed ids, when the model's lineage does not hold it yet."""
    from tokenizers import Tokenizer

    before = Tokenizer.from_file(str(untrimmed))
    rows = before.encode_batch(list(texts), add_special_tokens=False)
    if kept is None:
        cut = _cut(model_dir) or {}
        if cut.get("kept"):
            kept = unpack_kept(cut["kept"])
    if kept is not None:
        return np.array([not kept[r.ids].all() for r in rows], dtype=bool)
    # a model trimmed before its step recorded the mask: a dropped token's string is gone
    tokens = set(
        json.loads((Path(model_dir) / "tokenizer.json").read_text("utf-8"))["model"]["vocab"]
    )
    return np.array([any(t not in tokens for t in r.tokens) for r in rows], dtype=bool)
