"""User-facing errors: the CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class SmallfitError(Exception):
    """A problem the user can fix (bad input, bad config, missing file).

    The CLI prints ``str(error)`` and exits with code 2; ``--debug`` shows the traceback.
    """


class DataError(SmallfitError):
    """Bad input data, located by file, line (1-based) and field where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.message = message
        where = ""
        if self.file is not None:
            where = self.file
            if line is not None:
                where += f":{line}"
        if field is not None:
            where += f" field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(SmallfitError):
    """A config file or option that does not validate; names the key path."""
