"""A token tagger for an ``extract`` task (backend ``tagger``): an encoder with a token
classification head over BIO tags of the declared fields, in PyTorch.

Each token of a value's span is tagged (``B-field`` on its first token, ``I-field`` on the rest,
``O`` elsewhere). Reading an answer, word by word: a word (a run of letters and digits, or one
other character) takes the tag of its first token, as token classifiers are usually read, so the
pieces of one word never disagree; consecutive words of one field make a span, whose value is
the text's own characters, so a tagger never invents a value. Each field's confidence is the
lowest probability of the tags on its words' first tokens; a document's is the lowest over all
its words (its fields', and the ``O`` of the text between them, so a field the tagger nearly
found lowers it too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.fields import FieldSchema, Span, Values
from smallfit.models.base import dir_bytes, read_manifest, write_json
from smallfit.models.extractor import BaseExtractor

KIND = "tagger"
IGNORE = -100
"""The training target of a token that is not scored (special tokens, padding)."""


def bio_tags(schema: FieldSchema) -> list[str]:
    """``O``, then ``B-`` and ``I-`` of each field in the schema's order."""
    return ["O", *(f"{p}-{name}" for name in schema for p in ("B", "I"))]


def narrowed_tags(tags: Sequence[str], schema: FieldSchema) -> list[str]:
    """``tags`` with those of fields outside ``schema`` read as ``O``."""
    return [t if t == "O" or t[2:] in schema.names else "O" for t in tags]


@dataclass(frozen=True)
class Extraction:
    """One text's answer: its fields, their spans, each field's confidence and the
    document's."""

    values: Values
    spans: list[Span]
    field_confidence: dict[str, float]
    confidence: float
    tier: str = ""
    """Which model of a cascade answered (empty for a single model)."""
    valid: bool = True
    """Whether the model's answer parsed as the schema's JSON (a generative extractor's can
    fail to; it then has no fields)."""

    def as_json(self, schema: FieldSchema, tier: str) -> dict[str, Any]:
        """The answer as ``/v1/extract`` and ``smallfit predict`` give it: the fields as the
        schema renders them, each field's confidence and the document's (6 places), and the
        tier that answered."""
        return {
            "fields": schema.render(self.values),
            "field_confidence": {k: round(v, 6) for k, v in self.field_confidence.items()},
            "confidence": round(self.confidence, 6),
            "tier": tier,
        }


def token_targets(
    offsets: Sequence[tuple[int, int]], spans: Sequence[Span], tags: list[str]
) -> list[int]:
    """The BIO target of each token (``IGNORE`` for special tokens, whose offsets are empty):
    a token overlapping a span gets its field, ``B`` on the span's first such token."""
    index = {t: i for i, t in enumerate(tags)}
    out = []
    open_span: Span | None = None
    for start, end in offsets:
        if start == end:
            out.append(IGNORE)
            continue
        hit = next((s for s in spans if start < s.end and end > s.start), None)
        if hit is None:
            out.append(index["O"])
            open_span = None
            continue
        out.append(index[f"{'I' if hit is open_span else 'B'}-{hit.field}"])
        open_span = hit
    return out


def whole_words(text: str, spans: Sequence[Span]) -> list[Span]:
    """``spans`` widened to the whole words they touch, as answers are read: a value found
    inside a word (an LLM's, aligned to the text) is learned on the word's first piece, the
    one the decoding reads."""
    return [Span(*_widen(text, s.start, s.end), s.field) for s in spans]


def _joined(a: str, b: str) -> bool:
    """Whether characters ``a`` then ``b`` are in one word: letters or digits, neither a CJK
    ideograph (each of which BERT's pre-tokenizer makes a word of its own)."""
    return a.isalnum() and b.isalnum() and not (_ideograph(a) or _ideograph(b))


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and start < len(text) and _joined(text[start - 1], text[start]):
        start -= 1
    while 0 < end < len(text) and _joined(text[end - 1], text[end]):
        end += 1
    return start, end


def _ideograph(ch: str) -> bool:
    """A CJK ideograph, which BERT's pre-tokenizer makes a word of its own."""
    code = ord(ch)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0xF900 <= code <= 0xFAFF
        or 0x20000 <= code <= 0x2FA1F
    )


def words(text: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The words the tokens make, as (first token, start, end): a token continues the word
    before it when it starts where that one ended inside a run of letters and digits (a
    WordPiece ``##`` piece; a CJK ideograph is a word of its own), or inside it (byte-level
    pieces of one character share its offsets); special tokens (empty offsets) belong to none."""
    out: list[tuple[int, int, int]] = []
    for t, (start, end) in enumerate(offsets):
        if start == end:
            continue
        if out:
            first, begin, stop = out[-1]
            joined = 0 < start < len(text) and _joined(text[start - 1], text[start])
            if start < stop or (start == stop and joined):
                out[-1] = (first, begin, max(stop, end))
                continue
        out.append((t, start, end))
    return out


def decode(
    text: str, offsets: Sequence[tuple[int, int]], probs: np.ndarray, tags: list[str]
) -> Extraction:
    """An :class:`Extraction` from one text's token probabilities (tokens x tags)."""
    chosen = probs.argmax(axis=1)
    top = probs[np.arange(len(chosen)), chosen]
    spans: list[Span] = []
    conf: dict[str, float] = {}
    doc = 1.0
    current: tuple[str, int, int, float] | None = None  # field, start, end, lowest prob

    def close() -> None:
        nonlocal current
        if current is not None:
            name, s, e, p = current
            s, e = _widen(text, s, e)
            if spans and spans[-1].field == name and spans[-1].end >= s:  # touching: one value
                s = spans.pop().start
            spans.append(Span(s, e, name))
            conf[name] = min(conf.get(name, 1.0), p)
        current = None

    for t, start, end in words(text, offsets):
        doc = min(doc, float(top[t]))
        tag = tags[int(chosen[t])]
        if tag == "O":
            close()
            continue
        prefix, name = tag[0], tag[2:]
        if prefix == "I" and current is not None and current[0] == name:
            current = (name, current[1], end, min(current[3], float(top[t])))
            continue
        close()
        current = (name, start, end, float(top[t]))
    close()
    values: Values = {}
    for span in spans:
        values.setdefault(span.field, []).append(text[span.start : span.end])
    return Extraction(values, spans, conf, doc)


class TokenTagger(BaseExtractor):
    """An encoder token tagger over a field schema (PyTorch)."""

    kind = KIND

    def __init__(
        self,
        module: Any,
        tokenizer: Any,
        schema: FieldSchema,
        *,
        name: str,
        max_length: int = 64,
        lineage: dict[str, Any] | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.schema = schema
        self.tags = list(tags) if tags is not None else bio_tags(schema)
        """The tag of each output of the head (a field outside the schema reads as ``O``)."""
        known = {t[2:] for t in self.tags if t != "O"}
        if not set(schema.names) <= known or set(self.tags) - {"O", *bio_tags(schema)}:
            raise ValueError(f"tags {self.tags} do not match the fields {list(schema.names)}")
        self.name = name
        self.max_length = max_length
        self.lineage = dict(lineage or {})
        self.bytes_on_disk = 0

    @classmethod
    def from_base(
        cls,
        base: str | Path,
        schema: FieldSchema,
        *,
        name: str,
        max_length: int = 64,
        seed: int = 0,
    ) -> TokenTagger:
        """A new tagger on the encoder at ``base`` (a zoo alias or a model directory), its head
        initialised from ``seed``."""
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        from smallfit.zoo import resolve

        path = resolve(str(base))
        tags = bio_tags(schema)
        torch.manual_seed(seed)
        module = AutoModelForTokenClassification.from_pretrained(
            str(path),
            num_labels=len(tags),
            id2label=dict(enumerate(tags)),
            label2id={t: i for i, t in enumerate(tags)},
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
        return cls(
            module, tokenizer, schema, name=name, max_length=max_length, lineage={"base": str(base)}
        )

    @classmethod
    def from_hf_directory(
        cls, path: str | Path, schema: FieldSchema, *, name: str, max_length: int = 128
    ) -> TokenTagger:
        """A Hugging Face token classifier whose labels are BIO tags (``O``, ``B-field``,
        ``I-field``), read over ``schema``: it must tag every field of the schema; the tags of
        other fields read as ``O``."""
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        where = Path(path)
        try:
            config = json.loads((where / "config.json").read_text("utf-8"))
            id2label = {int(k): str(v) for k, v in config["id2label"].items()}
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise SmallfitError(
                f"{where}: not a Hugging Face token classifier (config.json with id2label: {exc})"
            ) from exc
        if sorted(id2label) != list(range(len(id2label))):
            raise SmallfitError(f"{where}/config.json: id2label ids are not 0..{len(id2label) - 1}")
        raw = [id2label[i] for i in range(len(id2label))]
        odd = [t for t in raw if t != "O" and (t[:2] not in ("B-", "I-") or not t[2:])]
        if odd:
            raise SmallfitError(
                f"{where}/config.json: labels {odd[:5]} are not BIO tags (O, B-field, I-field)"
            )
        known = {t[2:] for t in raw if t != "O"}
        missing = [n for n in schema if n not in known]
        if missing:
            raise SmallfitError(
                f"{where}: the tagger does not tag the data's fields {missing} (it tags "
                f"{sorted(known)})"
            )
        tags = narrowed_tags(raw, schema)
        tokenizer = AutoTokenizer.from_pretrained(str(where), use_fast=True)
        if not getattr(tokenizer, "is_fast", False):
            raise SmallfitError(f"{where}: a fast tokenizer is needed (character offsets)")
        module = AutoModelForTokenClassification.from_pretrained(str(where))
        limit = int(min(getattr(tokenizer, "model_max_length", max_length), max_length))
        return cls(
            module,
            tokenizer,
            schema,
            name=name,
            max_length=limit,
            lineage={"base": str(where), "tags": raw},
            tags=tags,
        )

    @property
    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.module.parameters()))

    def set_num_threads(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)

    def encode(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_offsets_mapping=True,
            return_tensors="np",
        )

    def token_probs(
        self, texts: Sequence[str]
    ) -> tuple[list[np.ndarray], list[list[tuple[int, int]]]]:
        """Each text's tag probabilities (its tokens x tags) and its tokens' character offsets."""
        import torch

        enc = self.encode(texts)
        with torch.inference_mode():
            logits = self.module(
                input_ids=torch.from_numpy(enc["input_ids"]),
                attention_mask=torch.from_numpy(enc["attention_mask"]),
            ).logits.float()
        probs = torch.softmax(logits, dim=-1).numpy()
        return _per_text(probs, enc)

    def extract(self, texts: Sequence[str], *, batch_size: int = 64) -> list[Extraction]:
        """The fields of each text."""
        out: list[Extraction] = []
        for i in range(0, len(texts), batch_size):
            batch = list(texts[i : i + batch_size])
            probs, offsets = self.token_probs(batch)
            out += [
                decode(t, o, p, self.tags) for t, o, p in zip(batch, offsets, probs, strict=True)
            ]
        return out

    # -- disk -----------------------------------------------------------------------------

    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        write_json(out / "smallfit.json", self._manifest(metrics))
        self.bytes_on_disk = dir_bytes(out)
        return out

    def _manifest(self, metrics: dict[str, Any] | None) -> dict[str, Any]:
        return self.manifest(metrics, tags=self.tags, max_length=self.max_length)

    @classmethod
    def load(cls, path: str | Path) -> TokenTagger:
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        where = Path(path)
        manifest = read_manifest(where)
        module = AutoModelForTokenClassification.from_pretrained(str(where))
        tokenizer = AutoTokenizer.from_pretrained(str(where), use_fast=True)
        model = cls(
            module,
            tokenizer,
            FieldSchema.from_dict(manifest["schema"]),
            name=manifest["name"],
            max_length=int(manifest["max_length"]),
            lineage=manifest.get("lineage"),
            tags=manifest.get("tags"),
        )
        model.bytes_on_disk = dir_bytes(where)
        return model


def _per_text(probs: np.ndarray, enc: Any) -> tuple[list[np.ndarray], list[list[tuple[int, int]]]]:
    """Per text, the probabilities and offsets of its real tokens (padding dropped)."""
    mask = enc["attention_mask"].astype(bool)
    offsets = enc["offset_mapping"]
    out_p, out_o = [], []
    for row in range(len(mask)):
        keep = mask[row]
        out_p.append(probs[row][keep])
        out_o.append([(int(a), int(b)) for a, b in offsets[row][keep]])
    return out_p, out_o
