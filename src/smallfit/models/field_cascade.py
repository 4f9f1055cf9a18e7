"""A cascade of extractors (backend ``field-cascade``): the first answers every text, and a text
whose document confidence is below the threshold is asked again of the next (the teacher).

On disk: the manifest only, naming its tiers' directories relative to itself (a run's
``models/cascade`` names ``../<tier>``) and the threshold calibrated on dev.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from smallfit.fields import FieldSchema
from smallfit.models.base import dir_bytes, read_manifest, write_json
from smallfit.models.extractor import BaseExtractor, load_extractor
from smallfit.models.tagger import Extraction

KIND = "field-cascade"


class FieldCascade(BaseExtractor):
    """Two extractors, cheapest first, and the confidence the first needs to answer."""

    kind = KIND

    def __init__(
        self,
        tiers: Sequence[BaseExtractor],
        dirs: Sequence[Path],
        threshold: float,
        *,
        name: str = "cascade",
        lineage: dict[str, Any] | None = None,
    ) -> None:
        if len(tiers) != 2:
            raise ValueError("a field cascade has two tiers")
        self.tiers = list(tiers)
        self.dirs = [Path(d) for d in dirs]
        self.threshold = float(threshold)
        self.schema: FieldSchema = tiers[0].schema
        self.name = name
        self.lineage = dict(lineage or {})
        self.bytes_on_disk = 0
        self.remote = any(t.remote for t in tiers)

    @property
    def num_parameters(self) -> int:
        return sum(t.num_parameters for t in self.tiers)

    def set_num_threads(self, threads: int) -> None:
        for tier in self.tiers:
            tier.set_num_threads(threads)

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()

    @property
    def invalid(self) -> dict[str, int] | None:
        """The tiers' unreadable answers by reason (an API tier's), None when no tier counts
        them."""
        counts = [getattr(t, "invalid", None) for t in self.tiers]
        if all(c is None for c in counts):
            return None
        out: dict[str, int] = {}
        for c in counts:
            for reason, n in (c or {}).items():
                out[reason] = out.get(reason, 0) + n
        return out

    @property
    def values_not_in_text(self) -> int | None:
        """The tiers' values not in their text (None when no tier counts them)."""
        counts = [getattr(t, "values_not_in_text", None) for t in self.tiers]
        return None if all(c is None for c in counts) else sum(c or 0 for c in counts)

    def extract(self, texts: Sequence[str], *, batch_size: int = 64) -> list[Extraction]:
        first, second = self.tiers
        answers = [replace(a, tier=first.name) for a in first.extract(texts)]
        unsure = [i for i, a in enumerate(answers) if a.confidence < self.threshold]
        if unsure:
            again = second.extract([texts[i] for i in unsure])
            for i, a in zip(unsure, again, strict=True):
                answers[i] = replace(a, tier=second.name)
        return answers

    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tiers = [os.path.relpath(d.resolve(), out.resolve()) for d in self.dirs]
        manifest = self.manifest(metrics, tiers=tiers, threshold=self.threshold)
        write_json(out / "smallfit.json", manifest)
        self.bytes_on_disk = dir_bytes(out) + sum(t.bytes_on_disk for t in self.tiers)
        return out

    @classmethod
    def load(cls, path: str | Path) -> FieldCascade:
        where = Path(path)
        manifest = read_manifest(where)
        dirs = [(where / d).resolve() for d in manifest["tiers"]]
        tiers = [load_extractor(d) for d in dirs]
        model = cls(
            tiers,
            dirs,
            float(manifest["threshold"]),
            name=manifest["name"],
            lineage=manifest.get("lineage"),
        )
        model.bytes_on_disk = dir_bytes(where) + sum(t.bytes_on_disk for t in tiers)
        return model
