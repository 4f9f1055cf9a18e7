"""Connecting to a Ray cluster, or starting one on this machine, with one-line errors.

Ray itself retries an unreachable address for minutes; a TCP probe refuses it in seconds,
before any work (or any paid request) starts."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from smallfit.errors import SmallfitError

PROBE_TIMEOUT_S = 5.0


class RayUnavailable(SmallfitError):
    """Ray is not installed, or the cluster given cannot be reached."""


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`RayUnavailable` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(
            "the ray engine needs Ray: pip install 'smallfit[ray]' (or 'ray[serve]==2.60.0')"
        ) from exc
    return ray


def start_ray(address: str | None, *, num_cpus: int | None = None) -> tuple[Any, bool]:
    """Connect to the Ray cluster at ``address``, or start one on this machine (``None``),
    unless this process is already connected; the ``ray`` module, and whether this call started
    it. A missing package or an unreachable cluster is a :class:`RayUnavailable` in one line."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if address is None:
        options["num_cpus"] = num_cpus
    else:
        probe(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return ray, True


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """:func:`start_ray` for the length of a ``with``: Ray is shut down after it only when this
    call started it."""
    ray, started_here = start_ray(address, num_cpus=num_cpus)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def probe(address: str) -> None:
    """Fail fast on a cluster address nothing listens at. ``auto`` and addresses without a
    port are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailable(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}"
        ) from None


def cluster_cpus(ray: Any) -> int:
    """The CPUs of the connected cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
