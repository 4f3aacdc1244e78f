"""A small string-keyed registry used for adapters, explanation methods and metrics.

Extending vision-audit means registering, not editing an if/elif chain. A registration carries
what callers need to know about the entry (its metadata), and a registry with a ``home`` package
finds its built-in entries by importing every module of that package, so one new file that
registers is one new entry::

    from audit.registry import METHODS

    @METHODS.register("my-method", target_free=False, gradient=True)
    def my_method(adapter, images, *, target, **params): ...

    METHODS.meta("my-method")["gradient"]  # True
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from audit.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects and their metadata. Unknown names raise a :class:`UsageError`
    listing the known ones."""

    def __init__(self, kind: str, *, home: str | None = None, defaults: Mapping[str, Any] | None = None) -> None:
        """Args:
            kind: what an entry is, named in error messages (``"explanation method"``).
            home: the package whose modules register the built-in entries (or one module that does).
                On first use it and every module of it (``pkgutil.iter_modules``) are imported by name,
                so a reader of the registry, e.g. the config, needs no import of it, and a new module
                there needs no other edit.
            defaults: the metadata keys every entry has and their values when a registration leaves
                one out (an attribute of the same name on the registered object counts as given).
        """
        self.kind = kind
        self.home = home
        self.defaults: dict[str, Any] = dict(defaults or {})
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._loaders: list[Callable[[], None]] = []
        if home is not None:
            self._loaders.append(lambda: discover(home))

    def register(self, name: str, obj: T | None = None, **meta: Any):
        """Register ``obj`` under ``name`` with metadata ``meta``; a decorator when ``obj`` is omitted.

        Example:
            >>> r = Registry("thing", defaults={"fast": False})
            >>> _ = r.register("a", len, fast=True)
            >>> r.meta("a")["fast"], r.get("a") is len
            (True, True)
        """

        def _do(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            self._meta[name] = dict(meta)
            return o

        if obj is not None:
            return _do(obj)
        return _do

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a method a test registered for itself); no error when it is absent."""
        self._items.pop(name, None)
        self._meta.pop(name, None)

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

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata of ``name``: every key of ``defaults`` (from the registration, else the
        object's attribute of that name, else the default) plus any other key it was registered with."""
        obj = self.get(name)
        out = {k: getattr(obj, k, v) for k, v in self.defaults.items()}
        out.update(self._meta.get(name, {}))
        return out

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def discover(package: str) -> list[str]:
    """Import ``package`` and every module in it (not recursively), in name order; returns their names
    (a plain module has none: importing it is all).

    Modules whose name starts with ``_`` are left out. This is how a registry with a ``home`` finds
    the modules that register its entries: a file dropped into the package is found, no list to edit.
    """
    pkg = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", []), prefix=f"{package}."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        importlib.import_module(info.name)
        found.append(info.name)
    return found


#: model families: name -> Adapter subclass (or a class with a ``load`` classmethod, see audit.models)
ADAPTERS: Registry = Registry(
    "model family",
    home="audit.models",
    defaults={"description": "", "examples": (), "kind": "classifier", "attention": False, "checkpoint_help": ""},
)
#: explanation methods: name -> callable (see audit.explain)
METHODS: Registry = Registry(
    "explanation method",
    home="audit.explain",
    defaults={"target_free": False, "needs_attention": False, "gradient": False, "families": None,
              "description": ""},
)
#: group metrics: name -> audit.stats.metrics.MetricDef (see audit.stats.metrics)
METRICS: Registry = Registry("metric", home="audit.stats.metrics")
