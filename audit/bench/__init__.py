"""``vision-audit bench NAME``: benchmarks that print ratios against a baseline measured in the
same process. Each benchmark is a module ``audit.bench.NAME`` with ``main(argv) -> int``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from audit.errors import UsageError


def available() -> list[str]:
    """Names of the benchmark modules in this package."""
    import audit.bench as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def run(name: str, argv: Sequence[str] | None = None) -> int:
    """Run benchmark ``name`` with command-line arguments ``argv``; returns its exit code."""
    if name not in available():
        raise UsageError(f"unknown benchmark {name!r}; available: {', '.join(available())}")
    mod = importlib.import_module(f"audit.bench.{name}")
    return int(mod.main(list(argv or [])))
