"""A generative extractor run by llama.cpp: a causal LM (fine-tuned to write a document's fields
as JSON, :mod:`smallfit.models.json_answer`) in one GGUF file, decoded greedily under the
schema's grammar so every answer parses.

Decoding is a loop over llama.cpp's own calls: the greedy token is checked against the grammar
alone, and only when the grammar rejects it are all candidates masked (llama.cpp's server does
the same; masking the whole vocabulary at every step costs 4x the time of the model here). Each
token's probability is read from the model's unmasked distribution; a field's confidence is the
lowest probability among the tokens of its value, a document's the lowest of its fields' (of
all its tokens when it has none). Values are placed in the text with
:func:`smallfit.fields.align`; a value the model wrote that is not in the text is kept (it is
the model's answer) and counted in :attr:`GgufExtractor.values_not_in_text`.

On disk: ``model.gguf`` and the manifest (schema, prompt, generation limits, GGUF type).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.fields import FieldSchema, align
from smallfit.models.base import dir_bytes, read_manifest, write_json
from smallfit.models.extractor import BaseExtractor
from smallfit.models.json_answer import grammar, parse_answer
from smallfit.models.llama_tools import bindings_version
from smallfit.models.tagger import Extraction

KIND = "gguf-extractor"
GGUF_FILE = "model.gguf"
TEXT = "{text}"
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class GenerationStats:
    """Tokens generated and seconds spent since the last reset (tokens per second, the prompt's
    evaluation included: what a caller sees)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens, self.seconds = 0, 0.0

    def rate(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None


class GgufExtractor(BaseExtractor):
    """A GGUF causal LM answering each text with its fields as JSON (llama.cpp). One context
    and its buffers: not for concurrent calls (the server runs each model on one thread)."""

    kind = KIND

    def __init__(
        self,
        path: Path,
        schema: FieldSchema,
        *,
        name: str,
        prompt: str,
        max_length: int,
        max_new_tokens: int,
        gguf_type: str,
        parameters: int = 0,
        lineage: dict[str, Any] | None = None,
    ) -> None:
        if prompt.count(TEXT) != 1:
            raise SmallfitError(f"{path}: the prompt must hold {TEXT} exactly once")
        self.path = Path(path)
        self.schema = schema
        self.name = name
        self.prompt = prompt
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.gguf_type = gguf_type
        self.parameters = parameters
        self.lineage = dict(lineage or {})
        self.bytes_on_disk = 0
        self.threads = _cores()
        self.generation = GenerationStats()
        self.values_not_in_text = 0
        self._llm: Any = None

    @property
    def num_parameters(self) -> int:
        return self.parameters

    def set_num_threads(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        if self._llm is not None:
            import llama_cpp

            llama_cpp.llama_set_n_threads(self._llm.ctx, self.threads, self.threads)

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _model(self) -> Any:
        if self._llm is None:
            bindings_version()
            from llama_cpp import Llama

            file = self.path / GGUF_FILE
            if not file.is_file():
                raise SmallfitError(f"{self.path}: no {GGUF_FILE}")
            before, _, after = self.prompt.partition(TEXT)
            self._llm = Llama(
                model_path=str(file),
                # the prompt's own tokens are at most its bytes
                n_ctx=self.max_length + self.max_new_tokens + len((before + after).encode()) + 8,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
            self._vocab = _vocab(self._llm)
            self._grammar = grammar(self.schema).encode()
            n = self._llm.n_vocab()
            self._all = (_token_data_type() * n)()
            self._all_view = np.frombuffer(self._all, dtype=_TOKEN_DATA)
            self._all_view["id"] = np.arange(n)
            self._one = (_token_data_type() * 1)()
            self._pieces: dict[int, bytes] = {}
            self._before = self._tokens(before)
            self._after = self._tokens(after)
        return self._llm

    def _tokens(self, text: str) -> list[int]:
        out: list[int] = self._llm.tokenize(text.encode(), add_bos=False, special=True)
        return out

    def prompt_tokens(self, text: str) -> list[int]:
        """The prompt around ``text``, whose own tokens are cut at ``max_length``."""
        self._model()
        body = self._llm.tokenize(text.encode(), add_bos=False, special=False)
        return [*self._before, *body[: self.max_length], *self._after]

    def generate(self, text: str) -> tuple[bytes, list[bytes], list[float]]:
        """The answer's bytes for ``text``, its tokens' bytes and their probabilities."""
        import llama_cpp

        llm = self._model()
        started = time.perf_counter()
        llm.reset()
        llm.eval(self.prompt_tokens(text))
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, self._grammar, b"root")
        if not sampler:
            raise SmallfitError(f"{self.path}: llama.cpp rejected the schema's grammar")
        pieces: list[bytes] = []
        probs: list[float] = []
        n = len(self._all_view)
        try:
            for _ in range(self.max_new_tokens):
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n,)
                )
                token = int(logits.argmax())
                self._one[0].id, self._one[0].logit = token, float(logits[token])
                one = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(one))
                if not np.isfinite(self._one[0].logit):  # the grammar forbids it: mask all
                    self._all_view["logit"] = logits
                    every = llama_cpp.llama_token_data_array(self._all, n, -1, False)
                    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(every))
                    token = int(self._all_view["logit"].argmax())
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    break
                top = float(logits.max())
                log_z = top + float(np.log(np.exp(logits - top).sum()))
                probs.append(float(np.exp(logits[token] - log_z)))
                llama_cpp.llama_sampler_accept(sampler, token)
                pieces.append(self._piece(token))
                llm.eval([token])
        finally:
            llama_cpp.llama_sampler_free(sampler)
        self.generation.tokens += len(pieces)
        self.generation.seconds += time.perf_counter() - started
        return b"".join(pieces), pieces, probs

    def _piece(self, token: int) -> bytes:
        """A token's bytes, as the grammar saw them (special tokens as their text; a piece of
        any length: llama-cpp-python's own detokenize drops pieces over 32 bytes)."""
        if token not in self._pieces:
            import llama_cpp

            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, True)
                if n >= 0:
                    self._pieces[token] = buf.raw[:n]
                    break
                size = -n
        return self._pieces[token]

    def extract_one(self, text: str) -> Extraction:
        """One text's answer. One that does not parse (cut at ``max_new_tokens``) has no fields
        and confidence 0, so a cascade always escalates it."""
        raw, pieces, probs = self.generate(text)
        try:
            answer = raw.decode("utf-8")
            values, ranges = parse_answer(answer, self.schema)
        except (UnicodeDecodeError, ValueError):
            return Extraction({}, [], {}, 0.0, valid=False)
        # each token's byte range in the answer; a field's value range in bytes
        ends = np.cumsum([len(p) for p in pieces])
        starts = ends - np.array([len(p) for p in pieces], dtype=ends.dtype)
        char_bytes = np.concatenate([[0], np.cumsum([len(c.encode()) for c in answer])])
        confidence: dict[str, float] = {}
        for name, where in ranges.items():
            lows = []
            for a, b in where:
                lo, hi = char_bytes[a], char_bytes[b]
                inside = zip(probs, starts, ends, strict=True)
                lows += [p for p, s, e in inside if s < hi and e > lo]
            confidence[name] = min(lows, default=1.0)
        spans, missing = align(text, values)
        self.values_not_in_text += len(missing)
        doc = min(confidence.values()) if confidence else min(probs, default=1.0)
        return Extraction(values, spans, confidence, doc)

    def extract(self, texts: Sequence[str], *, batch_size: int = 64) -> list[Extraction]:
        """The fields of each text (one at a time: llama.cpp decodes a sequence per call)."""
        return [self.extract_one(t) for t in texts]

    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() != self.path.resolve():
            shutil.copy2(self.path / GGUF_FILE, out / GGUF_FILE)
        manifest = self.manifest(
            metrics,
            prompt=self.prompt,
            max_length=self.max_length,
            max_new_tokens=self.max_new_tokens,
            gguf_type=self.gguf_type,
            file=GGUF_FILE,
        )
        write_json(out / "smallfit.json", manifest)
        self.bytes_on_disk = dir_bytes(out)
        return out

    @classmethod
    def load(cls, path: str | Path) -> GgufExtractor:
        where = Path(path)
        manifest = read_manifest(where)
        model = cls(
            where,
            FieldSchema.from_dict(manifest["schema"]),
            name=manifest["name"],
            prompt=manifest["prompt"],
            max_length=int(manifest["max_length"]),
            max_new_tokens=int(manifest["max_new_tokens"]),
            gguf_type=manifest["gguf_type"],
            parameters=int(manifest.get("parameters") or 0),
            lineage=manifest.get("lineage"),
        )
        model.bytes_on_disk = dir_bytes(where)
        return model


def _cores() -> int:
    """The cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _vocab(llm: Any) -> Any:
    import llama_cpp

    return llama_cpp.llama_model_get_vocab(llm.model)


def _token_data_type() -> Any:
    import llama_cpp

    return llama_cpp.llama_token_data
