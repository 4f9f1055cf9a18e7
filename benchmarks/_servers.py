"""Waiting for the servers a benchmark starts as subprocesses."""

from __future__ import annotations

import time
import urllib.request


def wait_ok(url: str, timeout_s: float = 600.0) -> None:
    """Poll ``url`` until it answers 200; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} was not ready within {timeout_s:g}s")
