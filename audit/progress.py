"""A tqdm progress bar driven by the pipeline's ``progress(stage, done, total)`` callback; without a
terminal (a log file, CI) a line per stage and per 10% of it instead."""

from __future__ import annotations

import sys
from typing import Any


class ProgressBar:
    """One bar per stage; ``write`` prints above the bar."""

    def __init__(self, *, disable: bool | None = None) -> None:
        self._bar: Any = None
        self._stage: str | None = None
        self._disable = (not sys.stderr.isatty()) if disable is None else disable
        self._decile = -1  # without a terminal: one line per stage and per 10% of it

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=stage, unit="img" if stage in ("forward", "explain") else "step",
                             file=sys.stderr, disable=self._disable, leave=False)
            self._decile = -1
            if self._disable:
                print(f"[{stage}] started ({total})", file=sys.stderr)
        if self._disable and total > 0:
            decile = min(10, int(10 * done / total))
            if decile > self._decile and 0 < decile < 10:
                print(f"[{stage}] {done}/{total} ({10 * decile}%)", file=sys.stderr, flush=True)
            self._decile = max(self._decile, decile)
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def write(self, msg: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            if self._disable and self._stage:
                print(f"[{self._stage}] done", file=sys.stderr)
        self._bar = None
