"""A small string-keyed registry used for adapters, explanation methods and metrics.

Extending vision-audit means registering, not editing an if/elif chain::

    from audit.registry import METHODS

    @METHODS.register("my-method")
    def my_method(adapter, images, *, target, **params): ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from audit.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects. Unknown names raise a :class:`UsageError` listing the known ones."""

    def __init__(self, kind: str, *, home: str | None = None) -> None:
        """``home``: the package whose import registers the built-in entries (imported by name on
        first use, so a reader of the registry, e.g. the config, needs no import of it)."""
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loaders: list[Callable[[], None]] = []
        if home is not None:
            self._loaders.append(lambda: importlib.import_module(home))

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _do(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        if obj is not None:
            return _do(obj)
        return _do

    def add_loader(self, fn: Callable[[], None]) -> None:
        """Register a callable that imports the modules which populate this registry (lazily)."""
        self._loaders.append(fn)

    def _load(self) -> None:
        while self._loaders:
            self._loaders.pop(0)()

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UsageError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


#: model families: name -> Adapter subclass (see audit.models)
ADAPTERS: Registry = Registry("model family")
#: explanation methods: name -> callable (see audit.explain)
METHODS: Registry = Registry("explanation method", home="audit.explain")
#: group metrics: name -> audit.stats.metrics.MetricDef (see audit.stats.metrics)
METRICS: Registry = Registry("metric", home="audit.stats.metrics")
