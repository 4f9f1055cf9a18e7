"""Config type -> handler registries (STYLE rule 1: one method = one config + one handler).

Teachers, students and (later) compression steps each keep one; adding a method registers a
handler and never touches the code that dispatches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from smallfit.errors import SmallfitError

H = TypeVar("H", bound=Callable[..., Any])


class Registry(Generic[H]):
    """Maps a config class to the function that carries it out."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._handlers: dict[type, H] = {}

    def register(self, config_type: type) -> Callable[[H], H]:
        """Decorator: ``@registry.register(MyConfig)`` above the handler."""

        def decorate(fn: H) -> H:
            self._handlers[config_type] = fn
            return fn

        return decorate

    def handler(self, config: object) -> H:
        """The handler for ``config``'s type, or a SmallfitError naming the known types."""
        try:
            return self._handlers[type(config)]
        except KeyError:
            known = ", ".join(sorted(t.__name__ for t in self._handlers))
            raise SmallfitError(
                f"no {self.what} handler for {type(config).__name__} (known: {known})"
            ) from None

    def types(self) -> set[type]:
        """The config types with a handler."""
        return set(self._handlers)
