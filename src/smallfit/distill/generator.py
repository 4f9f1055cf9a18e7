"""Distilling a generator student: a seeded sample of the training texts with the teacher's
answers as compact JSON, LoRA fine-tuning (:mod:`smallfit.train.generative`), the merged model
converted to one f16 GGUF file by llama.cpp's converter, saved as a
:class:`~smallfit.models.gguf_extractor.GgufExtractor`. The merged transformers weights are a
step on the way, kept in the model's work directory only until the conversion is done."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smallfit.distill.config import GeneratorStudent
from smallfit.fields import FieldSchema, Values, align
from smallfit.models.gguf_extractor import GGUF_FILE, GgufExtractor
from smallfit.models.json_answer import answer_text
from smallfit.models.llama_tools import bindings_version, convert_to_gguf
from smallfit.run.layout import work_of

ANSWER_MARGIN = 16
"""Tokens a generated answer may run past the longest training answer."""


def distill_generator(
    student: GeneratorStudent,
    texts: Sequence[str],
    answers: Sequence[Values | None],
    schema: FieldSchema,
    out_dir: Path,
    *,
    teacher: str,
    progress: bool = True,
) -> GgufExtractor:
    """Train ``student`` on ``texts`` with the teacher's ``answers`` (None: a text without one,
    left out) and save it in ``out_dir``."""
    from smallfit.train.generative import train_generator

    bindings_version()  # before any training: llama.cpp must be there to run the result
    rows = [i for i, a in enumerate(answers) if a is not None]
    if student.max_examples is not None and len(rows) > student.max_examples:
        rng = np.random.default_rng(student.train.seed)
        rows = sorted(rng.choice(rows, size=student.max_examples, replace=False).tolist())
    picked = [texts[i] for i in rows]
    outputs, not_in_text = [], 0
    for i in rows:
        values = answers[i] or {}
        spans, missing = align(texts[i], values)
        not_in_text += len(missing)
        outputs.append(answer_text(values, schema, spans))
    merged = work_of(out_dir) / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    report = train_generator(
        student.base,
        picked,
        outputs,
        student.train,
        out_dir=merged,
        prompt=student.prompt,
        lora_r=student.lora.r,
        lora_alpha=student.lora.alpha,
        lora_dropout=student.lora.dropout,
        lora_targets=student.lora.target_modules,
        name=student.name,
        progress=progress,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    convert_to_gguf(merged, out_dir / GGUF_FILE, outtype="f16")
    parameters = _parameters(merged)
    shutil.rmtree(merged, ignore_errors=True)
    longest = int(report.pop("longest_answer_tokens"))
    model = GgufExtractor(
        out_dir,
        schema,
        name=student.name,
        prompt=student.prompt,
        max_length=student.train.max_length,
        max_new_tokens=student.max_new_tokens or longest + ANSWER_MARGIN,
        gguf_type="f16",
        parameters=parameters,
        lineage={
            "base": student.base,
            "recipe": "LoRA on the teacher's answers as JSON, merged, converted by llama.cpp",
            "teacher": teacher,
            "training": report,
            "train_examples": len(rows),
            "values_not_in_text": not_in_text,
        },
    )
    model.save(out_dir)
    return model


def _parameters(directory: Path) -> int:
    """The parameters in a saved transformers directory (its safetensors headers)."""
    from safetensors import safe_open

    total = 0
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += int(np.prod(f.get_slice(key).get_shape()))
    return total
