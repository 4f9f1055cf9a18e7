"""Where output goes while smallfit works: its own lines, progress bars and errors to the
terminal; what third-party libraries print, log and warn to a log file.

A library's ``[ERROR] `past_key_values` is part of BertModel.forward's signature, but not
documented`` or a deprecation warning is no failure of the run, but on a terminal it reads like
one. Inside :func:`library_output` every write to ``sys.stdout`` and ``sys.stderr`` is sent by
who wrote it:

- a ``logging`` record by its logger's name: ``smallfit.*`` to the terminal, any other (
  ``transformers``, ``torch``, ``onnxscript``, ``accelerate``, ...) to the log file, including
  through handlers that libraries attached to the terminal before the block;
- a ``warnings`` message to the log file (smallfit's own notices are log lines, not warnings);
- any other write (``print``) by the module that made it: smallfit's own, the running script
  (``__main__``) and progress bars (``tqdm``) to the terminal, any other to the log file.

``fit`` logs to ``smallfit.log`` in the run directory, ``compress`` and ``label`` to a file
beside their output. ``--debug`` (``SMALLFIT_DEBUG=1``) shows library output on the terminal
too. Output that C code writes straight to the file descriptors, below Python, is not routed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

from smallfit.run.layout import RunDir

LOG_FILE = RunDir(".").log_file.name
"""The run directory's log of library output."""

_OURS = ("smallfit", "__main__", "tqdm")
"""Modules whose writes are for the terminal: smallfit, the script running it, progress bars."""
_PLUMBING = ("click", "io", "codecs", "encodings", "contextlib", "functools", "smallfit.logs")
"""Modules that write on someone else's behalf: look further out for who that is."""

F = TypeVar("F", bound=Callable[..., Any])


def _in(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def _ours(frame: FrameType | None) -> bool:
    """Whether the write being made under ``frame`` is smallfit's (see the module docstring)."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == "logging":
            record = frame.f_locals.get("record")
            if isinstance(record, logging.LogRecord):
                return _in(record.name, ("smallfit",))
        elif module == "warnings":
            return False
        elif not _in(module, _PLUMBING):
            return _in(module, _OURS)
        frame = frame.f_back
    return True


class _Router:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: smallfit's writes go to the stream it
    replaced, libraries' to the log file (and the stream too, with ``debug``). Once the block
    has ended it passes everything on to the current ``sys`` stream: a handler a library made
    during the block keeps this object as its stream."""

    def __init__(self, name: str, terminal: IO[str], log: IO[str], *, debug: bool) -> None:
        self.name = name
        self.terminal = terminal
        self.log: IO[str] | None = log
        self.debug = debug
        self.lines = 0
        self.lock = threading.Lock()

    def _passthrough(self) -> IO[str]:
        current = getattr(sys, self.name)
        return self.terminal if current is self else current

    def write(self, text: str) -> int:
        if self.log is None or _ours(sys._getframe(1)):
            return self._passthrough().write(text)
        with self.lock:
            if self.log is not None:
                self.log.write(text)
                self.lines += text.count("\n")
        if self.debug:
            self.terminal.write(text)
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self.lock:
            if self.log is not None:
                self.log.flush()
        self._passthrough().flush()

    def close_log(self) -> None:
        with self.lock:
            self.log = None

    def isatty(self) -> bool:
        return self._passthrough().isatty()

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, errors, buffer, ...
        return getattr(self._passthrough(), name)


_active: Path | None = None
_active_lock = threading.Lock()


def debug_enabled() -> bool:
    """Whether library output should reach the terminal too (``--debug``)."""
    return os.environ.get("SMALLFIT_DEBUG") == "1"


@contextlib.contextmanager
def library_output(log_file: str | Path, *, what: str = "") -> Iterator[Path]:
    """Send library output to ``log_file`` (appended to) for the block; yields the file in use.

    Inside another such block this one changes nothing: the outer file keeps receiving. At
    the end, one line on the terminal says how much went to the file, if anything did.
    """
    global _active
    with _active_lock:
        outer, path = _active, Path(log_file)
        if outer is None:
            _active = path
    if outer is not None:
        yield outer
        return
    routers: dict[str, _Router] = {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8", buffering=1) as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"===== {stamp} smallfit {what or 'run'} (pid {os.getpid()}) =====\n")
            debug = debug_enabled()
            for name in ("stdout", "stderr"):
                routers[name] = _Router(name, getattr(sys, name), log, debug=debug)
            handlers = _handlers_on(routers)
            sys.stdout, sys.stderr = routers["stdout"], routers["stderr"]
            try:
                yield path
            finally:
                for name, router in routers.items():
                    if getattr(sys, name) is router:
                        setattr(sys, name, router.terminal)
                    router.close_log()
                for handler, stream in handlers:
                    closed = getattr(stream, "closed", False)
                    _set_stream(handler, sys.stderr if closed else stream)
    finally:
        with _active_lock:
            _active = None
        lines = sum(r.lines for r in routers.values())
        if lines and not debug_enabled():
            sys.stderr.write(f"[log] {lines} lines of library output (warnings, logs): {path}\n")


def _handlers_on(routers: dict[str, _Router]) -> list[tuple[logging.StreamHandler[Any], Any]]:
    """Point the plain stream handlers of every logger at the routers (one that writes to
    stdout at the stdout router, any other at the stderr router); returns what to restore.
    Libraries (transformers, torch) attach such handlers when imported, to whatever
    ``sys.stderr`` was then: the terminal, or an object that has since been replaced (a test
    runner's capture), so the stream's identity is no guide. File handlers (a subclass) stay."""
    stdout = {id(routers["stdout"].terminal), id(sys.__stdout__)}
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    moved = []
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler and not isinstance(handler.stream, _Router):
                router = routers["stdout" if id(handler.stream) in stdout else "stderr"]
                moved.append((handler, handler.stream))
                _set_stream(handler, router)
    return moved


def _set_stream(handler: logging.StreamHandler[Any], stream: Any) -> None:
    """``handler.setStream`` without flushing the old stream, which may be closed already (a
    test runner's capture that has since ended)."""
    with handler.lock or contextlib.nullcontext():
        handler.stream = stream


def routed(log_file: Callable[..., str | Path]) -> Callable[[F], F]:
    """Run the decorated function inside :func:`library_output`, logging to
    ``log_file(*args, **kwargs)`` (the function's own arguments)."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with library_output(log_file(*args, **kwargs), what=function.__name__):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def beside(directory: str | Path) -> Path:
    """The log file of a command that writes a model directory: ``out/model`` ->
    ``out/model.log``."""
    path = Path(directory)
    return path.with_name(path.name + ".log")
