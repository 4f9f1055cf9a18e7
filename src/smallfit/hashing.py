"""Content hashes that key caches and stage reuse."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def hash_json(obj: Any) -> str:
    """Stable sha256 of a JSON-serialisable object (keys sorted)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()


def hash_texts(texts: Iterable[str]) -> str:
    """sha256 over a sequence of texts, unambiguous about boundaries."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def hash_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_MODEL_CARD = "MODEL_CARD.md"  # smallfit.models.base.MODEL_CARD (not imported: no cycle)


def hash_dir(path: str | Path) -> str:
    """sha256 over every file under a directory (relative names and contents), but a model
    card (documentation a report may rewrite)."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name != _MODEL_CARD):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(hash_file(file).encode())
    return digest.hexdigest()
