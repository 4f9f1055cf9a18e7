"""llama.cpp's own tools for GGUF: its converter (``convert_hf_to_gguf.py`` with its
``gguf-py`` and ``conversion`` package) and its quantizer (``llama_model_quantize`` through the
llama-cpp-python bindings).

The converter travels only inside llama-cpp-python's source distribution, so the first use takes
that sdist (the version of the installed bindings, from the package index: pip's own download)
and keeps the converter's files in the cache (``<cache>/llama-cpp-tools-<version>``);
``scripts/setup`` does it ahead, so later runs work offline. ``SMALLFIT_LLAMA_CPP_TOOLS`` names
another directory holding the same files (a llama.cpp checkout).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from smallfit.errors import SmallfitError
from smallfit.weights import build_once, cache_dir

QUANT_TYPES = {"q8_0": "Q8_0", "q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q4_0": "Q4_0"}
"""What a GGUF model can be quantized to (lower case) and llama.cpp's name of it."""
_CONVERTER = "convert_hf_to_gguf.py"
_PARTS = (_CONVERTER, "gguf-py/", "conversion/")
_TAIL = 2000


def bindings_version() -> str:
    """The installed llama-cpp-python's version, or an error saying how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise SmallfitError(
            "GGUF models need llama-cpp-python: run scripts/setup, which builds it for this CPU "
            f"({exc})"
        ) from None
    return str(llama_cpp.__version__)


def tools_dir() -> Path:
    """A directory holding llama.cpp's converter, fetched into the cache on first use."""
    explicit = os.environ.get("SMALLFIT_LLAMA_CPP_TOOLS")
    if explicit:
        where = Path(explicit).expanduser()
        if not (where / _CONVERTER).is_file():
            raise SmallfitError(f"SMALLFIT_LLAMA_CPP_TOOLS={where}: no {_CONVERTER} there")
        return where
    version = bindings_version()
    return build_once(
        cache_dir() / f"llama-cpp-tools-{version}",
        checksum=version,
        build=lambda out: _fetch(version, out),
    )


def _fetch(version: str, out: Path) -> None:
    """The converter's files from llama-cpp-python's sdist (downloaded by pip) into ``out``."""
    with tempfile.TemporaryDirectory(prefix="smallfit-llama-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
        cmd += ["--no-deps", "--no-binary", ":all:", "-d", tmp, f"llama-cpp-python=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        archives = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise SmallfitError(
                f"llama.cpp's GGUF converter comes with llama-cpp-python {version}'s source, "
                "which could not be downloaded (run scripts/setup where the package index is "
                f"reachable, or set SMALLFIT_LLAMA_CPP_TOOLS to a llama.cpp checkout): "
                f"{proc.stderr.strip()[-_TAIL:]}"
            )
        prefix = f"{archives[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(archives[0]) as tar:
            members = []
            for m in tar.getmembers():
                rest = m.name.removeprefix(prefix)
                if m.name.startswith(prefix) and rest.startswith(_PARTS) and m.isreg():
                    m.name = rest
                    members.append(m)
            if not any(m.name == _CONVERTER for m in members):
                raise SmallfitError(f"{archives[0].name} holds no {_CONVERTER}")
            out.mkdir(parents=True)
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: refuse unsafe members
                tar.extractall(out, members=members, filter="data")
            else:
                tar.extractall(out, members=members)  # the members' names were checked above


def convert_to_gguf(hf_dir: Path, out_file: Path, *, outtype: str = "f16") -> None:
    """A transformers causal-LM directory written as one GGUF file by llama.cpp's converter."""
    tools = tools_dir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tools / "gguf-py"), str(tools), env.get("PYTHONPATH")) if p
    )
    cmd = [sys.executable, str(tools / _CONVERTER), str(hf_dir)]
    cmd += ["--outfile", str(out_file), "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not out_file.is_file():
        raise SmallfitError(
            f"{hf_dir}: llama.cpp's converter failed (exit {proc.returncode}):\n"
            f"{proc.stderr.strip()[-_TAIL:]}"
        )


def quantize_gguf(src: Path, dst: Path, kind: str, *, threads: int = 0) -> None:
    """``src`` (a GGUF file) quantized to ``kind`` (:data:`QUANT_TYPES`) by llama.cpp."""
    if kind not in QUANT_TYPES:
        raise SmallfitError(f"GGUF type {kind!r}: known types are {', '.join(QUANT_TYPES)}")
    bindings_version()
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{QUANT_TYPES[kind]}")
    params.nthread = threads
    said: list[str] = []
    # llama-cpp-python's log callback prints what its logger's level lets through (a model
    # loaded with verbose=False leaves only errors): all of it, captured, for the reason
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with _captured_output(said):  # and a line per tensor on the C side's stdout
            rc = llama_cpp.llama_model_quantize(
                str(src).encode(), str(dst).encode(), ctypes.byref(params)
            )
    finally:
        logger.setLevel(level)
    if rc != 0 or not dst.is_file():
        tail = "".join(said)[-_TAIL:]
        raise SmallfitError(f"{src}: llama.cpp could not quantize it to {kind} (code {rc}): {tail}")


@contextlib.contextmanager
def _captured_output(into: list[str]) -> Iterator[None]:
    """What the block writes, appended to ``into``: file descriptors 1 and 2 go to a temporary
    file (ggml prints there directly) and so do Python's streams (llama-cpp-python's log
    callback prints llama.cpp's messages to ``sys.stderr``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        finally:
            _flush_c_streams()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            written = sink.read().decode("utf-8", errors="replace")
            into.append((written + text.getvalue()).strip())


def _flush_c_streams() -> None:
    """C's buffered stdout/stderr written out, so nothing lands after the descriptors return."""
    with contextlib.suppress(OSError, AttributeError):  # no C library: nothing buffered
        ctypes.CDLL(None).fflush(None)


if __name__ == "__main__":  # scripts/setup: fetch the converter while the index is reachable
    print(tools_dir())
