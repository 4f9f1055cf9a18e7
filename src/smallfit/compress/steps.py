"""Compression step configs: one per method, ``method`` tells them apart in YAML.

A method's config class is its registration here: :data:`CompressionStep` lists them, and the
method list, the grid's choices, short names and the CLI help are derived from it. Its handler
registers with :func:`smallfit.compress.base.register_step`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    short: ClassVar[str]
    """The step's part of a grid candidate's name (``minilm-l6-l3-int8``)."""
    quantizes: ClassVar[bool] = False
    """A way the result runs that the grid's ``quantize`` offers (after an ONNX export)."""
    example: ClassVar[str]
    """How the step is written on the command line (``--step``)."""
    after_onnx: ClassVar[bool] = True
    """A quantizing step the grid puts after an ONNX export (the GGUF ones run on their own)."""
    keeps_fusion: ClassVar[bool] = True
    """Whether it does its work on a fused ONNX graph as well as on a plain one."""

    def before(self, later: list[Any]) -> Any:
        """This step as it runs ahead of the ``later`` steps of its chain (itself, unless a
        setting depends on them)."""
        return self


class OnnxExport(_Step):
    """Export a transformer classifier to ONNX with the dynamo exporter, checked against
    PyTorch on padded batches."""

    method: Literal["onnx"] = "onnx"
    short = "onnx"
    example = "onnx"
    tolerance: float = Field(1e-3, gt=0)
    """Largest allowed |logit difference| to PyTorch on the check texts; above it the step fails."""
    opset: int = Field(18, ge=17)
    """ONNX opset version."""
    fuse: bool | Literal["auto"] = "auto"
    """`true`: export with eager attention through the TorchScript exporter, whose graph ONNX
    Runtime's transformer optimizer fuses (Attention, SkipLayerNormalization,
    EmbedLayerNormalization, BiasGelu), then check it like the plain export; BERT-family
    encoders (MiniLM) only, and every layer's attention must fuse. `auto` (the default): fused
    where that applies, else the plain dynamo export (the step's metrics say which and why).
    `false`: the plain export. The fused graph's layer norms are then spelled out as
    `layer_norm` says, and its all-zero token types come from two operators instead of the
    fifteen the exporter traced. Measured on Banking77, int8, batch 1, 1 thread: 1.14x faster
    (6 layers) and 1.12x (3 layers), accuracy within 0.2 points. `auto` does not fuse ahead of
    `int4-weight` or `int8-static`, which quantize MatMul nodes (fused attention would keep its
    weights in float)."""
    layer_norm: Literal["ops", "kernel"] = "ops"
    """How the graph computes its layer norms (float32 ones). `ops` (the default): as nine to
    eleven basic operators (reductions and elementwise), which ONNX Runtime's CPU kernels run
    2-3x faster than its own `LayerNormalization`/`SkipLayerNormalization` kernels, whose loops
    are scalar (at batch 1
    and 12 tokens of MiniLM: about 12 us against 30 us each; the 3-layer int8 MiniLM on
    Banking77 went from 891 to 809 us a query, interleaved); `kernel`: the single operator the
    exporter or ONNX Runtime's optimizer wrote."""

    def before(self, later: list[Any]) -> Any:
        if self.fuse == "auto" and not all(step.keeps_fusion for step in later):
            return self.model_copy(update={"fuse": False})
        return self


class OrtDynamicInt8(_Step):
    """ONNX Runtime dynamic int8 quantization of the weights (activations quantized per batch)."""

    method: Literal["int8-dynamic"] = "int8-dynamic"
    short = "int8"
    quantizes = True
    example = "int8-dynamic"
    per_channel: bool = True
    """One scale per output channel (per-tensor breaks models with outlier channels, e.g. mpnet)."""
    min_agreement: float = Field(0.97, ge=0, le=1)
    """Least argmax agreement with the float model on the check texts."""
    fallback: bool = True
    """Below ``min_agreement``, find the matrix multiplications whose quantization hurts most
    and leave them in float until it is met; off: the step fails instead."""


class OrtStaticInt8(_Step):
    """ONNX Runtime static int8 (QDQ): activation ranges calibrated on your own texts."""

    keeps_fusion = False  # its QDQ pairs go on MatMul nodes; a fused Attention hides its weights
    method: Literal["int8-static"] = "int8-static"
    short = "int8s"
    quantizes = True
    example = "int8-static"
    per_channel: bool = True
    """One weight scale per output channel."""
    calibration_texts: int = Field(256, gt=0)
    """How many of your texts calibrate the activation ranges."""
    calibrate_method: Literal["minmax", "percentile"] = "minmax"
    """How activation ranges are set: min/max seen, or the 99.999th percentile. (ONNX Runtime's
    'entropy' is left out: through quantize_static it gives exactly minmax's ranges.)"""
    min_agreement: float = Field(0.97, ge=0, le=1)
    """Least argmax agreement with the float model on the check texts."""
    fallback: bool = True
    """Below ``min_agreement``, leave the most harmful matrix multiplications in float."""


class HealConfig(_Step):
    """A short distillation against the teacher's probabilities after a step that removes
    weights; ``epochs: 0`` skips it."""

    epochs: float = Field(3.0, ge=0)
    """Passes over the healing texts (the training pool in ``fit``); 0 = no healing. Three
    passes took the demo's 3-layer int8 MiniLM on Banking77 from 97.0% of the teacher's
    accuracy (one pass) to 98.2% (two: 98.0%), for about a minute more; on Bitext all three
    stayed within 0.1 pt of the teacher."""
    lr: float = Field(1e-4, gt=0)
    """Learning rate of the encoder (the head gets 20x)."""
    batch_size: int = Field(32, gt=0)
    max_examples: int | None = Field(None, gt=0)
    """Heal on at most this many texts (a seeded sample); None = all of them."""
    time_budget: str | None = None
    """Stop healing cleanly after this long, e.g. '5m'."""
    seed: int = 0


class TrimVocab(_Step):
    """Keep only the vocabulary your training texts use (plus the special tokens), shrinking the
    embedding table; the tokenizer is remapped to match and loads with the standard tooling. A
    piece your texts never used stands in as its nearest kept piece (`unseen: nearest`) or is
    dropped, a word that needs it spelled in kept pieces (`unseen: spell`); the evaluation
    reports accuracy apart on the test texts with such a piece. WordPiece tokenizers (BERT,
    MiniLM, MPNet)."""

    method: Literal["trim-vocab"] = "trim-vocab"
    short = "tv"
    example = "trim-vocab"
    keep_chars: bool | None = None
    """Keep every single-character piece, so an unseen word is spelled out rather than
    becoming `[UNK]`. `null` (the default): with `unseen: spell`, yes; with `nearest`, no (an
    unused character is a stand-in like any other piece, and its row is saved)."""
    keep_general: int = Field(0, ge=0)
    """Also keep the first N whole-word tokens of the base vocabulary (BERT's are roughly in
    frequency order): general words your texts did not use."""
    positions: bool = True
    """Also drop the position rows past the model's `max_length`, which no input reaches (the
    tokenizer truncates there): 448 of MiniLM's 512 at the students' default 64."""
    unseen: Literal["nearest", "spell"] = "nearest"
    """What a token your texts never used becomes. `nearest` (the default): its string stays in
    the tokenizer, mapped to the kept token whose embedding is nearest (a word to a word, a `##`
    piece to a piece, a character to a character), so every word tokenizes as before; the
    tokenizer file keeps every string (about 0.4 MB for BERT's), and the characters your texts
    did not use need no rows. `spell`: it is dropped, and a word that needs it is split into
    kept pieces, down to single characters. On Banking77 (6 layers, FFN -60%, int8) `nearest`
    scored 93.15% at 8.09 MB, `spell` 92.99% at 8.42 MB."""


class DropLayers(_Step):
    """Keep ``keep`` of the encoder's layers, then heal."""

    method: Literal["drop-layers"] = "drop-layers"
    short = "l{keep}"
    example = "drop-layers:keep=3"
    keep: int = Field(..., ge=1)
    """How many layers remain."""
    strategy: Literal["alternate", "bottom", "top", "importance"] = "alternate"
    """Which layers remain: evenly spaced (first and last kept), the lowest, the highest, or
    those whose removal alone changes the output most (measured on your texts)."""
    heal: HealConfig = HealConfig()


class PruneStructured(_Step):
    """Remove the least important attention heads and FFN neurons (physically: the matrices
    shrink), then heal. Importance is first-order (|weight x gradient| of the distillation loss
    summed over each head's or neuron's weights), measured on your texts."""

    method: Literal["prune"] = "prune"
    short = "p{percent}"
    example = "prune:heads=0.25,ffn=0.3"
    heads: float = Field(0.0, ge=0, lt=1)
    """Share of all attention heads removed (at least one head stays in every layer)."""
    ffn: float = Field(0.0, ge=0, lt=1)
    """Share of FFN neurons removed in every layer."""
    importance_texts: int = Field(512, gt=0)
    """How many of your texts the importance is measured on."""
    heal: HealConfig = HealConfig()


class PruneMagnitude(_Step):
    """Zero the smallest-magnitude encoder weights. Honest note: the matrices stay dense, so
    CPU kernels run no faster and the file is no smaller; only a compressed copy shrinks."""

    method: Literal["magnitude"] = "magnitude"
    short = "m{percent}"  # not in the grid
    example = "magnitude:sparsity=0.5"
    sparsity: float = Field(0.5, gt=0, lt=1)
    """Share of the encoder's linear-layer weights set to zero (per matrix)."""
    heal: HealConfig = HealConfig(epochs=0)


class OrtInt4Weight(_Step):
    """4-bit weight-only quantization (ONNX Runtime MatMulNBits): weights in blocks of
    ``block_size`` with one scale each; activations stay float or, at ``accuracy_level`` 4,
    are quantized to int8 in blocks of a row inside the kernel (not per batch, as int8-dynamic
    does)."""

    keeps_fusion = False  # MatMulNBits takes MatMul nodes; a fused Attention hides its weights
    method: Literal["int4-weight"] = "int4-weight"
    short = "int4"
    quantizes = True
    example = "int4-weight"
    block_size: Literal[16, 32, 64, 128, 256] = 128
    """Weights sharing one scale (smaller: more accurate, slightly larger)."""
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    """Compute type of the kernel: 4 = int8 (fastest on CPU), 1 = fp32, 0 = the default."""
    embeddings: bool = True
    """Also store the token embedding table in 4 bits (most of a small model's bytes)."""
    min_agreement: float = Field(0.97, ge=0, le=1)
    """Least argmax agreement with the float model on the check texts; below it the step fails."""


class _GgufQuantize(_Step):
    quantizes = True
    after_onnx = False
    gguf_type: ClassVar[str]
    check_texts: int = Field(32, ge=0)
    """Texts whose answers are compared with the unquantized model's (reported, not a gate:
    a generative model's answers are measured on test like every candidate's)."""


class GgufQ8(_GgufQuantize):
    """llama.cpp's quantizer on a GGUF model (a generator student): Q8_0, 8-bit blocks of 32
    weights with one scale each."""

    method: Literal["gguf-q8_0"] = "gguf-q8_0"
    short = "q8"
    example = "gguf-q8_0"
    gguf_type = "q8_0"


class GgufQ4KM(_GgufQuantize):
    """llama.cpp's quantizer on a GGUF model (a generator student): Q4_K_M, 4-bit k-quants
    with some tensors kept at higher precision. Tensors whose rows are not a multiple of 256
    (SmolLM2's 576-wide ones) fall back to llama.cpp's nearest type that fits."""

    method: Literal["gguf-q4_k_m"] = "gguf-q4_k_m"
    short = "q4km"
    example = "gguf-q4_k_m"
    gguf_type = "q4_k_m"


CompressionStep = Annotated[
    TrimVocab
    | DropLayers
    | PruneStructured
    | PruneMagnitude
    | OnnxExport
    | OrtDynamicInt8
    | OrtStaticInt8
    | OrtInt4Weight
    | GgufQ8
    | GgufQ4KM,
    Field(discriminator="method"),
]
"""One step; ``method`` picks the type."""


STEP_TYPES: tuple[type[_Step], ...] = get_args(get_args(CompressionStep)[0])
"""Every method's config class, in the order above."""
METHODS: tuple[str, ...] = tuple(t.model_fields["method"].default for t in STEP_TYPES)
"""Every method's name."""
QUANTIZE: tuple[str, ...] = (
    "torch",
    "onnx",
    *(t.model_fields["method"].default for t in STEP_TYPES if t.quantizes),
)
"""How a grid candidate runs: PyTorch, float ONNX, or ONNX with a quantizing method."""


def step_type(method: str) -> type[_Step]:
    """The config class of ``method``."""
    return STEP_TYPES[METHODS.index(method)]


def parse_quant(method: str) -> Any:
    """The quantizing step called ``method``, with its defaults."""
    kind = step_type(method)
    if not kind.quantizes:
        raise ValueError(f"{method!r} is not a quantization method")
    return kind()


def short_name(method: str) -> str:
    """A grid's ``quantize`` choice as it appears in a candidate's name."""
    return method if method == "torch" else step_type(method).short


def cli_help() -> str:
    """Every method as written on the command line, for ``smallfit compress --step``."""
    return ", ".join(f"'{t.example}'" for t in STEP_TYPES)
