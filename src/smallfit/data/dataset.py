"""Loading and validating datasets (JSONL, CSV, Parquet) and carving splits.

Every problem with the input is a :class:`~smallfit.errors.DataError` naming the file, the
1-based line (Parquet: row) and the field. Splits are stratified and seeded with numpy, so the
same :class:`~smallfit.config.DataConfig` always gives the same splits.

Gold labels are optional when the teacher labels the pool (``load_dataset(...,
gold_required=None)``): a row without one (the field missing, null or empty) has the label
:data:`NO_GOLD`, and the rows without gold are carved like one more class, so a pool with no
gold at all is carved at random.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.data.config import DataConfig
from smallfit.data.files import FORMATS, NO_GOLD, Split, read_split
from smallfit.errors import DataError

__all__ = [
    "FORMATS",
    "GOLD_EVERYWHERE",
    "NO_GOLD",
    "Dataset",
    "Split",
    "load_dataset",
    "read_split",
]

_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")

GOLD_EVERYWHERE = "every example needs a label"
"""Why gold labels are required, by default: there is no other source of labels."""

# One independent random stream per carving step, so e.g. max_test never moves dev.
_HOLDOUT, _MAX_TRAIN, _DEV, _MAX_TEST, _HOLD_OUT_LABELS = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Dataset:
    """train (the pool the teacher labels), dev (carved from train, stratified), test."""

    train: Split
    dev: Split
    test: Split
    labels: list[str]
    out_of_scope: list[str] = field(default_factory=list)
    """Out-of-scope test texts: those labelled with the config's ``out_of_scope`` label (never a
    class), then the test texts of the held-out labels."""
    out_of_scope_labels: list[str] = field(default_factory=list)
    """Where each out-of-scope text came from: its label in the data (the ``out_of_scope``
    label, or the held-out label it had)."""
    held_out: list[str] = field(default_factory=list)
    """The labels held out (``hold_out_labels``), sorted; no split but the out-of-scope texts
    holds them."""
    leaked: int = 0
    """Test texts also in train or dev, after :func:`normalise_text`."""


# ---------------------------------------------------------------------------------------------
# Stratified, seeded splitting


def _rng(seed: int, step: int) -> np.random.Generator:
    # SeedSequence needs non-negative entropy; fold negative seeds in without collisions.
    folded = 2 * seed if seed >= 0 else -2 * seed - 1
    return np.random.default_rng([folded, step])


def _allocate(
    counts: np.ndarray, total: int, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per-class sizes summing to ``total`` (when lo/hi allow), proportional to ``counts``."""
    quota = total * counts / counts.sum()
    alloc = np.clip(np.floor(quota).astype(np.int64), lo, hi)
    tiebreak = rng.random(len(counts))
    while (diff := total - int(alloc.sum())) != 0:
        movable = np.flatnonzero(alloc < hi if diff > 0 else alloc > lo)
        if movable.size == 0:
            break
        gap = (quota - alloc)[movable]
        # largest shortfall first when adding, largest surplus first when removing
        order = np.lexsort((tiebreak[movable], -gap if diff > 0 else gap))
        alloc[movable[order[: abs(diff)]]] += 1 if diff > 0 else -1
    return alloc


def _pick(labels: list[str], alloc_for: Any, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a stratified sample; ``alloc_for(counts)`` gives per-class sizes."""
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    alloc = alloc_for(counts)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    chosen = [
        rng.choice(order[start : start + count], size=k, replace=False)
        for start, count, k in zip(starts, counts, alloc, strict=True)
        if k > 0
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _subset(split: Split, index: np.ndarray, source: str) -> Split:
    idx = index.tolist()
    return Split(
        texts=[split.texts[i] for i in idx],
        labels=[split.labels[i] for i in idx],
        source=source,
        lines=[split.lines[i] for i in idx] if split.lines else [],
    )


def _carve(
    split: Split, fraction: float, rng: np.random.Generator, name: str
) -> tuple[Split, Split]:
    """Stratified ``(rest, held)`` with ``held`` about ``fraction`` of ``split``.

    Every class keeps at least one example in ``rest`` (so a single-example class stays there).
    """

    def alloc_for(counts: np.ndarray) -> np.ndarray:
        hi = counts - 1
        total = min(max(1, round(len(split) * fraction)), int(hi.sum()))
        return _allocate(counts, total, np.zeros_like(counts), hi, rng)

    held = _pick(split.labels, alloc_for, rng)
    if held.size == 0:
        raise DataError(
            f"too few examples to carve a {name} set: no label occurs twice in train",
            file=split.source,
        )
    rest = np.setdiff1d(np.arange(len(split)), held, assume_unique=True)
    return _subset(split, rest, split.source), _subset(split, held, f"{split.source} ({name})")


def _slice(split: Split, size: int, rng: np.random.Generator) -> Split:
    """A stratified sample of ``size`` examples; every class kept when ``size`` allows."""
    if size >= len(split):
        return split

    def alloc_for(counts: np.ndarray) -> np.ndarray:
        lo = np.ones_like(counts) if size >= len(counts) else np.zeros_like(counts)
        return _allocate(counts, size, lo, counts, rng)

    return _subset(split, _pick(split.labels, alloc_for, rng), split.source)


# ---------------------------------------------------------------------------------------------
# The whole dataset


def load_dataset(
    config: DataConfig,
    *,
    gold_required: str | None = GOLD_EVERYWHERE,
    labels: list[str] | None = None,
) -> Dataset:
    """Read train (and test), validate the labels, and carve the seeded stratified splits.

    Order: hold out test (only when ``config.test`` is None) from the full train file, then
    the held-out labels (``hold_out_labels``) leave train and test (their test rows become
    out-of-scope texts), then ``max_train`` slices what is left, then dev is carved from that
    slice; ``max_test`` slices test. So the held-out test set does not move when ``max_train``
    or the held-out labels change.

    ``gold_required`` says why every row needs a gold label (it ends the error of a row
    without one); None makes gold optional on every split (the teacher labels the pool). The
    label set is then the gold labels and ``config.labels``, or ``labels`` when given (a
    model teacher's own).
    """

    def read(path: Path) -> Split:
        try:
            return read_split(
                path,
                format=config.format,
                text_field=config.text_field,
                label_field=config.label_field,
                optional_labels=gold_required is None,
            )
        except DataError as exc:
            if gold_required is None or exc.field != config.label_field:
                raise
            raise DataError(
                f"{exc.message} ({gold_required})", file=exc.file, line=exc.line, field=exc.field
            ) from exc

    oos = [config.out_of_scope] if config.out_of_scope is not None else []
    train, out_of_scope = _split_labels(read(config.train), oos)
    test_file = read(config.test) if config.test is not None else None
    label_set = _label_set(config, train, labels)

    if test_file is None:
        train, test = _carve(train, config.test_fraction, _rng(config.seed, _HOLDOUT), "test")
    else:
        test, out_of_scope = _split_labels(test_file, oos)
        where = "data.labels" if config.labels else f"the labels of train ({train.source})"
        _check_test_labels(test, set(label_set), config.label_field, where)
    held = _held_out_labels(config, label_set, train)
    if held:
        train, _ = _split_labels(train, held)
        test, held_test = _split_labels(test, held)
        out_of_scope = Split(
            texts=[*out_of_scope.texts, *held_test.texts],
            labels=[*out_of_scope.labels, *held_test.labels],
            source=test.source,
        )
        label_set = [y for y in label_set if y not in held]
    if config.max_train is not None:
        n_labels = len(set(train.labels) - {NO_GOLD})
        if config.max_train < n_labels:
            raise DataError(
                f"max_train={config.max_train} is smaller than the number of labels "
                f"({n_labels}); raise it so every label keeps an example",
                file=train.source,
                field=config.label_field,
            )
        train = _slice(train, config.max_train, _rng(config.seed, _MAX_TRAIN))
    train, dev = _carve(train, config.dev_fraction, _rng(config.seed, _DEV), "dev")
    if config.max_test is not None:
        test = _slice(test, config.max_test, _rng(config.seed, _MAX_TEST))
    if config.extra_train:
        if gold_required is not None:
            raise DataError(
                f"data.extra_train is for a teacher to label, but {gold_required}",
                field="extra_train",
            )
        train = _with_extra(train, dev, test, config)
    leaked = _leaked(train, dev, test, config)
    return Dataset(
        leaked=leaked,
        train=train,
        dev=dev,
        test=test,
        labels=label_set,
        out_of_scope=out_of_scope.texts,
        out_of_scope_labels=out_of_scope.labels,
        held_out=held,
    )


def _with_extra(train: Split, dev: Split, test: Split, config: DataConfig) -> Split:
    """``train`` and the texts of ``config.extra_train`` (no gold), less those already in any
    split."""
    seen = {normalise_text(t) for t in (*train.texts, *dev.texts, *test.texts)}
    texts = list(train.texts)
    for path in config.extra_train:
        extra = read_split(
            path, format=config.format, text_field=config.text_field, label_field=None
        )
        for text in extra.texts:
            norm = normalise_text(text)
            if norm not in seen:
                seen.add(norm)
                texts.append(text)
    added = len(texts) - len(train)
    # lines are left out once rows of other files join: a line number would name the wrong file
    return Split(
        texts=texts,
        labels=[*train.labels, *[NO_GOLD] * added],
        source=train.source,
        lines=train.lines if not added else [],
    )


def normalise_text(text: str) -> str:
    """Case-folded (NFKC), punctuation dropped, whitespace collapsed: texts equal after this
    are duplicates."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", folded)).strip()


def _leaked(train: Split, dev: Split, test: Split, config: DataConfig) -> int:
    """How many test texts are also in train or dev; with ``leakage: error``, an error naming
    the first."""
    seen = {normalise_text(t) for t in (*train.texts, *dev.texts)}
    lines: list[int | None] = list(test.lines) or [None] * len(test)
    leaked = [line for line, t in zip(lines, test.texts, strict=True) if normalise_text(t) in seen]
    if leaked and config.leakage == "error":
        raise DataError(
            f"{len(leaked)} test text(s) also in train or dev (after normalising case, "
            "punctuation and spaces): merge duplicates before splitting, or set "
            "data.leakage: warn",
            file=test.source,
            line=leaked[0],
            field=config.text_field,
        )
    return len(leaked)


def _label_set(config: DataConfig, train: Split, given: list[str] | None) -> list[str]:
    """The classes: ``given`` (a model teacher's), else the gold labels of train with
    ``config.labels``; at least 2. A gold label outside ``given`` or ``config.labels`` is an
    error naming its line."""
    gold = sorted(set(train.labels) - {NO_GOLD})
    declared = given if given is not None else config.labels
    if declared is not None:
        known = set(declared)
        where = "the teacher's labels" if given is not None else "data.labels"
        lines: list[int | None] = list(train.lines) or [None] * len(train)
        for line, label in zip(lines, train.labels, strict=True):
            if label != NO_GOLD and label not in known:
                raise DataError(
                    f"label {label!r} is not one of {where} ({_preview(declared)})",
                    file=train.source,
                    line=line,
                    field=config.label_field,
                )
        labels = sorted(known)
    else:
        labels = gold
    if len(labels) < 2:
        if not gold:
            raise DataError(
                "no row of train has a gold label, so the label set is unknown: list the "
                "labels in the config (data.labels: [...]) for the teacher to choose from",
                file=train.source,
                field=config.label_field,
            )
        raise DataError(
            f"train has only 1 distinct label ({labels[0]!r}); a classifier needs at least 2",
            file=train.source,
            field=config.label_field,
        )
    return labels


def _preview(labels: list[str], limit: int = 20) -> str:
    return ", ".join(labels[:limit]) + (" ..." if len(labels) > limit else "")


def _held_out_labels(config: DataConfig, labels: list[str], train: Split) -> list[str]:
    """The labels ``config.hold_out_labels`` names, or that many drawn with the data seed."""
    want = config.hold_out_labels
    if want is None:
        return []
    key = "hold_out_labels"
    source = train.source
    if train.n_gold < len(train):
        raise DataError(
            f"{key} needs a gold label on every row of train, to take the held-out labels' "
            f"rows out; {len(train) - train.n_gold} of {len(train)} rows have none",
            file=source,
            field=key,
        )
    count = want if isinstance(want, int) else len(want)
    if count > len(labels) - 2:
        raise DataError(
            f"{key} holds out {count} of the {len(labels)} labels; at least 2 must remain "
            f"to train a classifier (hold out at most {max(len(labels) - 2, 0)})",
            file=source,
            field=key,
        )
    if isinstance(want, int):
        rng = _rng(config.seed, _HOLD_OUT_LABELS)
        return sorted(str(x) for x in rng.choice(labels, size=want, replace=False))
    unknown = [name for name in want if name not in labels]
    if unknown:
        raise DataError(
            f"{key} names {unknown}, which {'is' if len(unknown) == 1 else 'are'} not a label "
            f"of train (labels: {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''})",
            file=source,
            field=key,
        )
    return sorted(want)


def _split_labels(split: Split, labels: list[str]) -> tuple[Split, Split]:
    """(rows whose label is not in ``labels``, rows whose label is)."""
    chosen = set(labels)
    held = np.array([y in chosen for y in split.labels], dtype=bool)
    return _subset(split, np.flatnonzero(~held), split.source), _subset(
        split, np.flatnonzero(held), split.source
    )


def _check_test_labels(test: Split, known: set[str], label_field: str, where: str) -> None:
    lines: list[int | None] = list(test.lines) or [None] * len(test)
    for line, label in zip(lines, test.labels, strict=True):
        if label != NO_GOLD and label not in known:
            unseen = sorted(set(test.labels) - known - {NO_GOLD})
            more = f" ({len(unseen)} unseen labels in all)" if len(unseen) > 1 else ""
            raise DataError(
                f"label {label!r} is not one of {where}{more}",
                file=test.source,
                line=line,
                field=label_field,
            )
