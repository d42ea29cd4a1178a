"""A small generic registry: name -> object, with close-match suggestions on a miss."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgesplit.errors import EdgesplitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind (model sources, policies, estimators, codecs)."""

    def __init__(self, kind: str, error: type[EdgesplitError] = EdgesplitError) -> None:
        self.kind = kind
        self._error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name``; a duplicate name is an error."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry called ``name``, or an error listing the known names and the closest ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise self._error(unknown_name_message(self.kind, name, self._entries)) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown_name_message(kind: str, name: str, known: object) -> str:
    """``unknown <kind> 'x'; did you mean 'y'? known: a, b, c`` (the list shortened when long)."""
    names = sorted(known)  # type: ignore[call-overload]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    message = f"unknown {kind} {name!r}"
    if close:
        message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if len(names) > 20:
        return f"{message} ({len(names)} known)"
    return f"{message} (known: {', '.join(names)})"
