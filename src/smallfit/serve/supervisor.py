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
import logging
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

_log = logging.getLogger("smallfit.serve")

START_TIMEOUT_S = 600.0
"""How long a worker may take to load its model before the server gives up."""
STOP_TIMEOUT_S = 15.0
"""How long the workers have to finish their requests when the server stops."""
QUICK_DEATH_S = 60.0
"""A worker that dies sooner than this after it started counts as failing again."""
MAX_FAILURES = 5
"""Failures in a row (each restart waits twice as long) before a worker stops the server."""
ACCEPTS_PER_TURN = 64
HAND_WAIT_S = 5.0
"""How long a new connection waits for room in a worker's channel when every one is full."""


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

    def __init__(self, shared: SharedDir, index: int, generation: int) -> None:
        self.index = index
        self.started = time.monotonic()
        self.restart_at: float | None = None
        """Once it died: when its successor starts."""
        shared.unready(index)
        here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        here.setblocking(False)
        self.channel = here
        command = [sys.executable, "-m", "smallfit.serve.supervisor"]
        command += [str(shared.root), str(there.fileno()), str(index), str(generation)]
        # a session of its own: Ctrl-C reaches the supervisor, which stops the workers in turn
        self.proc = subprocess.Popen(command, pass_fds=(there.fileno(),), start_new_session=True)
        there.close()

    def hand(self, conn: socket.socket, *, wait_s: float = 0.0) -> bool | None:
        """Hand a connection over: True; None if its channel is full (waiting up to
        ``wait_s``); False if the worker is gone."""
        try:
            if wait_s:
                self.channel.settimeout(wait_s)
            return socket.send_fds(self.channel, [b"c"], [conn.fileno()]) == 1
        except (BlockingIOError, TimeoutError):
            return None
        except OSError:  # EPIPE, ECONNREFUSED: the worker is gone
            return False
        finally:
            if wait_s:
                self.channel.setblocking(False)

    def close(self) -> None:
        self.channel.close()


class _Supervisor:
    """The workers: started, handed connections in turn, restarted, stopped."""

    def __init__(self, shared: SharedDir, listener: socket.socket, count: int) -> None:
        self.shared, self.listener, self.count = shared, listener, count
        self.generation = 0
        # the first alone, so a model that does not load fails once; the others once it serves
        self.workers = [self._start(0)]
        self.served = False
        self.failures = [0] * count
        """Each worker's failures in a row (a start that did not serve, a quick death)."""
        self.turn = 0
        self.selector = selectors.DefaultSelector()
        self.accepting = False

    def _start(self, index: int) -> _Worker:
        self.generation += 1
        return _Worker(self.shared, index, self.generation)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: accept and hand out connections, and restart a worker that exits."""
        while not stop.is_set():
            self._check_workers()
            serving = [
                w for w in self.workers if w.restart_at is None and self.shared.ready(w.index)
            ]
            if serving and not self.served:
                self.served = True
                self.workers += [self._start(i) for i in range(1, self.count)]
            if serving and not self.accepting:  # no connection is accepted before a worker serves
                self.selector.register(self.listener, selectors.EVENT_READ)
                self.accepting = True
            if self.accepting:
                if self.selector.select(timeout=0.2):
                    self._accept(serving)
            else:
                time.sleep(0.1)

    def _check_workers(self) -> None:
        now = time.monotonic()
        for i, worker in enumerate(self.workers):
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    worker.close()
                    self.workers[i] = self._start(i)
                continue
            code = worker.proc.poll()
            ready = self.shared.ready(worker.index)
            if code is None:
                if not ready and now - worker.started > START_TIMEOUT_S:
                    raise WorkersFailed(f"worker {i} not serving after {START_TIMEOUT_S:.0f} s")
                continue
            if not self.served:  # the first worker never served: its model does not load
                raise WorkersFailed(f"worker {i} exited with code {code} before serving")
            quick = not ready or now - worker.started < QUICK_DEATH_S
            self.failures[i] = self.failures[i] + 1 if quick else 0
            if self.failures[i] > MAX_FAILURES:
                raise WorkersFailed(
                    f"worker {i} exited with code {code}, its {self.failures[i]}th failure in "
                    "a row (see above)"
                )
            delay = min(2.0 ** (self.failures[i] - 1), 30.0) if self.failures[i] else 0.0
            print(
                f"worker {i} exited with code {code}: starting another"
                + (f" in {delay:.0f} s" if delay else ""),
                file=sys.stderr,
            )
            worker.restart_at = now + delay  # meanwhile the others take the new connections

    def _accept(self, serving: list[_Worker]) -> None:
        for _ in range(ACCEPTS_PER_TURN):  # then back to the loop: stop, dead workers
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors: the kernel keeps the connection
                time.sleep(0.05)
                return
            with conn:
                self._hand(conn, serving)

    def _hand(self, conn: socket.socket, serving: list[_Worker]) -> None:
        """To the next worker whose channel has room; if every channel is full, wait for the
        next one a while; if none takes it, closing it tells the client at once."""
        for _ in range(len(serving)):
            worker = serving[self.turn % len(serving)]
            self.turn += 1
            if worker.hand(conn):
                return
        worker = serving[self.turn % len(serving)]
        self.turn += 1
        worker.hand(conn, wait_s=HAND_WAIT_S)

    def stop(self) -> None:
        self.selector.close()
        self.listener.close()  # no new connection waits for workers that are stopping
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
            self.protocol = protocol
            asyncio.get_running_loop().add_reader(channel.fileno(), self._receive)

        def _receive(self) -> None:
            loop = asyncio.get_running_loop()
            while True:
                try:
                    message, fds, flags, _ = socket.recv_fds(channel, 1, 16)
                except BlockingIOError:
                    return
                if not message and not fds:  # the supervisor is gone (even killed): stop
                    loop.remove_reader(channel.fileno())
                    self.should_exit = True
                    return
                if flags & socket.MSG_CTRUNC:
                    _log.error("a connection was lost: this worker is out of file descriptors")
                for fd in fds:
                    conn = socket.socket(fileno=fd)
                    conn.setblocking(False)
                    task = loop.create_task(loop.connect_accepted_socket(self.protocol, conn))
                    _TAKING.add(task)
                    task.add_done_callback(_taken)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if hasattr(self, "protocol"):  # started: take what was handed before stopping
                self._receive()
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


def _worker(root: Path, fd: int, index: int, generation: int) -> None:
    """One worker: the app over the published model, serving what the supervisor hands it."""
    import resource

    from smallfit.serve import uvicorn_config
    from smallfit.serve.app import create_app

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # keep-alive connections are fds
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    shared = SharedDir(root)
    published = shared.published()
    channel = socket.socket(fileno=fd)
    channel.setblocking(False)
    worker = f"w{index}-g{generation}-{os.getpid()}"  # a pid comes back; a generation does not
    peers = FilePeers(shared, worker, index, published.sequence)
    app = create_app(published.path, shared.config(), peers=peers)
    _handed_server(uvicorn_config(app), channel).run()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
