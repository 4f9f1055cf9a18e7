"""``smallfit serve --workers N``: the supervisor process and its N workers.

One process answers about as many requests a second as one core allows: the HTTP layer and the
model share its interpreter. N worker processes (each with ``threads`` compute threads, by
default the cores divided between them) answer about N times as many.

The supervisor (the ``smallfit serve`` process) listens on the port. It accepts each new
connection and hands it to the next worker in turn, over a Unix socket (``SCM_RIGHTS``), so
the workers share connections evenly. When the kernel chose instead (workers accepting on one
shared socket, or ``SO_REUSEPORT`` sockets hashed by address), a few long-lived keep-alive
connections often landed on one worker: 4 connections gave 633 requests/s against 1,237 when
they were split. Requests on a connection go straight to its worker; the supervisor sees only
new connections.

The supervisor starts one worker, and the others once it serves (a model that does not load
fails once, with one traceback). It restarts a worker that dies after it served (on the model
published last), and stops them all on Ctrl-C or SIGTERM. A worker that dies before it served
(a model that does not load) stops the server with :class:`WorkersFailed`. What the workers
share (the model, the metrics) goes through :class:`~smallfit.serve.workers.FilePeers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.evaluate.speed import cpu_threads_all
from smallfit.run.store import resolve_model_path
from smallfit.serve.config import ServeConfig
from smallfit.serve.workers import FilePeers, SharedDir

START_TIMEOUT_S = 600.0
"""How long a worker may take to load its model before the server gives up."""
STOP_TIMEOUT_S = 15.0
"""How long the workers have to finish their requests when the server stops."""


class WorkersFailed(SmallfitError):
    """A worker died before it served, so the server stopped (its error is above)."""


def worker_threads(config: ServeConfig) -> int:
    """Compute threads per worker: ``config.threads``, else the cores divided between the
    workers (at least one)."""
    return config.threads or max(1, cpu_threads_all() // config.workers)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SmallfitError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Worker:
    """One worker process and the supervisor's end of its channel."""

    def __init__(self, shared: SharedDir, index: int) -> None:
        self.index = index
        (shared.ready_dir / str(index)).unlink(missing_ok=True)
        here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        here.setblocking(False)
        self.channel = here
        command = [sys.executable, "-m", "smallfit.serve.supervisor"]
        command += [str(shared.root), str(there.fileno()), str(index)]
        # a session of its own: Ctrl-C reaches the supervisor, which stops the workers in turn
        self.proc = subprocess.Popen(command, pass_fds=(there.fileno(),), start_new_session=True)
        there.close()

    def hand(self, conn: socket.socket) -> bool:
        """Hand a connection over; False if the worker cannot take it now."""
        try:
            return socket.send_fds(self.channel, [b"c"], [conn.fileno()]) == 1
        except OSError:  # its queue full, or the worker gone
            return False

    def close(self) -> None:
        self.channel.close()


class _Supervisor:
    """The workers: started, handed connections in turn, restarted, stopped."""

    def __init__(self, shared: SharedDir, listener: socket.socket, count: int) -> None:
        self.shared, self.listener, self.count = shared, listener, count
        # the first alone, so a model that does not load fails once; the others once it serves
        self.workers = [_Worker(shared, 0)]
        self.turn = 0
        self.selector = selectors.DefaultSelector()
        self.accepting = False

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: accept and hand out connections, and restart a worker that exits
        after it served."""
        started = time.monotonic()
        while not stop.is_set():
            self._check_workers(started)
            serving = [w for w in self.workers if self.shared.ready(w.index)]
            if serving and len(self.workers) < self.count:
                self.workers += [_Worker(self.shared, i) for i in range(1, self.count)]
            if serving and not self.accepting:  # no connection is accepted before a worker serves
                self.selector.register(self.listener, selectors.EVENT_READ)
                self.accepting = True
            if self.accepting:
                if self.selector.select(timeout=0.2):
                    self._accept(serving)
            else:
                time.sleep(0.1)

    def _check_workers(self, started: float) -> None:
        for i, worker in enumerate(self.workers):
            code = worker.proc.poll()
            if code is None:
                continue
            if not self.shared.ready(worker.index):
                raise WorkersFailed(f"worker {i} exited with code {code} before serving")
            print(f"worker {i} exited with code {code}: starting another", file=sys.stderr)
            worker.close()
            self.workers[i] = _Worker(self.shared, i)
        loading = [w.index for w in self.workers if not self.shared.ready(w.index)]
        if loading and time.monotonic() - started > START_TIMEOUT_S:
            raise WorkersFailed(f"workers {loading} not serving after {START_TIMEOUT_S:.0f} s")

    def _accept(self, serving: list[_Worker]) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, say: the kernel keeps the connection
                return
            with conn:
                for _ in range(len(serving)):
                    worker = serving[self.turn % len(serving)]
                    self.turn += 1
                    if worker.hand(conn):
                        break
                # if no worker took it, closing it here tells the client at once

    def stop(self) -> None:
        self.selector.close()
        live = [w.proc for w in self.workers if w.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for worker in self.workers:
            worker.close()


@contextlib.contextmanager
def _shared_dir(path: Path, config: ServeConfig) -> Iterator[SharedDir]:
    with tempfile.TemporaryDirectory(prefix="smallfit-serve-") as root:
        shared = SharedDir(Path(root))
        shared.create(path, config)
        yield shared


def serve_workers(model_path: str | Path, config: ServeConfig) -> None:
    """Serve ``model_path`` from ``config.workers`` processes on one port until interrupted
    (Ctrl-C or SIGTERM); :class:`WorkersFailed` if a worker dies before it serves."""
    path = resolve_model_path(model_path)
    config = config.model_copy(update={"threads": worker_threads(config)})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with _listen(config.host, config.port) as listener, _shared_dir(path, config) as shared:
        supervisor = _Supervisor(shared, listener, config.workers)
        try:
            supervisor.run(stop)
        finally:
            supervisor.stop()


# -- a worker --------------------------------------------------------------------------------


def _exit_with_parent() -> None:
    """Stop this worker (SIGTERM: a graceful shutdown) if the supervisor dies without stopping
    it."""
    parent = os.getppid()

    def check() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=check, name="smallfit-parent-watch", daemon=True).start()


def _handed_server(config: Any, channel: socket.socket) -> Any:
    """A uvicorn server for the connections the supervisor hands over ``channel``, not for a
    socket of its own."""
    import uvicorn

    class HandedServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=[])  # the app's start-up; no listener
            if self.should_exit:
                return
            make: Any = self.config.http_protocol_class
            protocol = functools.partial(
                make,
                config=self.config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
            )
            loop = asyncio.get_running_loop()
            loop.add_reader(channel.fileno(), self._receive, loop, protocol)

        def _receive(self, loop: asyncio.AbstractEventLoop, protocol: Any) -> None:
            while True:
                try:
                    _, fds, _, _ = socket.recv_fds(channel, 1, 16)
                except BlockingIOError:
                    return
                if not fds:  # the supervisor closed the channel
                    loop.remove_reader(channel.fileno())
                    return
                for fd in fds:
                    conn = socket.socket(fileno=fd)
                    conn.setblocking(False)
                    task = loop.create_task(loop.connect_accepted_socket(protocol, conn))
                    _TAKING.add(task)
                    task.add_done_callback(_taken)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            await super().shutdown(sockets)

    return HandedServer(config)


_TAKING: set[asyncio.Task[Any]] = set()
"""Handed connections being set up (held, so that none is collected half-way)."""


def _taken(task: asyncio.Task[Any]) -> None:
    """A handed connection set up, or the client gone before it was (nothing to answer)."""
    _TAKING.discard(task)
    if not task.cancelled():
        task.exception()


def _worker(root: Path, fd: int, index: int) -> None:
    """One worker: the app over the published model, serving what the supervisor hands it."""
    from smallfit.serve import uvicorn_config
    from smallfit.serve.app import create_app

    _exit_with_parent()
    shared = SharedDir(root)
    published = shared.published()
    channel = socket.socket(fileno=fd)
    channel.setblocking(False)
    peers = FilePeers(shared, f"w{index}-{os.getpid()}", index, published.sequence)
    app = create_app(published.path, shared.config(), peers=peers)
    _handed_server(uvicorn_config(app), channel).run()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
