"""The run directory: the single hand-off between computing and presenting.

Layout and table columns are documented in ``docs/RUN_FORMAT.md``. Writes are
atomic (temporary file in the same directory, fsync, ``os.replace``), so a
killed run never leaves a file that reads as complete; ``run.json`` carries a
``status`` and is rewritten last. Reading a run never loads the model.

Example:
    >>> run = Run.open("runs/demo/vit-biased")          # doctest: +SKIP
    >>> run.table("group_performance").head()           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.errors import RunError

if TYPE_CHECKING:
    from audit.config import AuditConfig

SCHEMA_VERSION = 1


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success fsync and rename it into place.

    On any exception the temporary file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
        with contextlib.suppress(OSError):  # make the rename durable where supported
            dfd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (UTF-8, sorted keys, NaN written as null)."""
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def readable(path: Path) -> Path:
    """Give a written file the usual permissions rw-r--r-- (temporary files are created 0600)."""
    os.chmod(path, 0o644)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically, readable by others (reports)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return readable(Path(path))


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes atomically, readable by others (PNG figures)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return readable(Path(path))


def write_table(path: str | os.PathLike[str], df: Any) -> None:
    """Write a pandas DataFrame as Parquet atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_arrays(path: str | os.PathLike[str], arrays: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write named arrays/tensors as safetensors atomically."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for k, v in arrays.items():
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        tensors[k] = t.detach().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if hasattr(obj, "model_dump"):
        return _jsonable(obj.model_dump(mode="json"))
    return obj


def package_versions() -> dict[str, str]:
    """Versions of the packages that change numbers, for provenance."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist, key in [
        ("vision-audit", "vision-audit"),
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("timm", "timm"),
        ("open_clip_torch", "open_clip"),
        ("transformers", "transformers"),
        ("captum", "captum"),
        ("fairlearn", "fairlearn"),
        ("numpy", "numpy"),
        ("pandas", "pandas"),
        ("scipy", "scipy"),
        ("scikit-learn", "scikit-learn"),
    ]:
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Run:
    """A run directory. Create with :meth:`create`, open an existing one with :meth:`open`."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    # -- creation / opening --------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], *, overwrite: bool = False, meta: dict[str, Any] | None = None) -> Run:
        """Start a new run at ``path`` (status "partial")."""
        p = Path(path)
        if (p / "run.json").exists() and not overwrite:
            raise RunError(
                f"{p} already holds a run; pass overwrite (--overwrite) to replace it, "
                "resume (--resume) to continue it, or choose another output directory"
            )
        p.mkdir(parents=True, exist_ok=True)
        run = cls(path=p, meta={
            "schema_version": SCHEMA_VERSION,
            "run_id": uuid.uuid4().hex[:12],
            "created": utc_now(),
            "status": "partial",
            "tables": [],
            "methods": [],
            "skipped": [],
            "timings": {},
            "limitations": [],
            "versions": package_versions(),
            **(meta or {}),
        })
        run.save_meta()
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, allow_partial: bool = False) -> Run:
        """Open a finished run (or a partial one with ``allow_partial``) without loading any model."""
        p = Path(path)
        meta_path = p / "run.json"
        if not meta_path.is_file():
            raise RunError(f"{p} is not a run directory (no run.json); create one with `vision-audit run CONFIG`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(f"{meta_path} cannot be read ({exc}); the run is damaged, run it again") from exc
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RunError(
                f"{meta_path} has schema_version {version!r}; this vision-audit reads version {SCHEMA_VERSION}"
            )
        if meta.get("status") != "complete" and not allow_partial:
            raise RunError(
                f"{p} is an unfinished run (status {meta.get('status')!r}); resume it with "
                "`vision-audit run CONFIG --resume`"
            )
        return cls(path=p, meta=meta)

    # -- metadata --------------------------------------------------------------
    def save_meta(self) -> None:
        write_json(self.path / "run.json", self.meta)

    def finish(self, status: str = "complete") -> None:
        self.meta["status"] = status
        self.meta["finished"] = utc_now()
        self.save_meta()

    @property
    def name(self) -> str:
        model = self.meta.get("model", {})
        return str(model.get("name") or model.get("spec") or self.path.name)

    @property
    def group_columns(self) -> list[str]:
        return list(self.meta.get("dataset", {}).get("group_columns", []))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("model", {}).get("class_names") or [])

    @property
    def methods(self) -> list[str]:
        return list(self.meta.get("methods", []))

    @property
    def kind(self) -> str:
        return str(self.meta.get("model", {}).get("kind", "classifier"))

    # -- the run's config and model ----------------------------------------------
    @property
    def config(self) -> AuditConfig:
        """The run's :class:`~audit.config.AuditConfig`, parsed from run.json's ``config``.

        Every reader of a run's settings uses this view (and so the config's own defaults),
        never a default of its own. Paths are not checked: a finished run is read where its
        manifest or checkpoint may be gone.

        Raises:
            RunError: run.json records no config, or it does not parse (the message names the field).
        """
        from audit.config import parse_config
        from audit.errors import ConfigError

        raw = self.meta.get("config")
        if not isinstance(raw, dict) or not raw:
            raise RunError(f"{self.path / 'run.json'} records no config (key 'config'); run the audit again")
        key = json.dumps(raw, sort_keys=True, default=str)
        cached = self.__dict__.get("_config")
        if cached is None or cached[0] != key:  # meta is mutable: parse again when it changed
            try:
                cfg = parse_config(raw, source=f"{self.path / 'run.json'} (key 'config')", check_paths=False)
            except ConfigError as exc:
                raise RunError(f"{exc}\nthe run's config does not parse with this vision-audit; run the audit "
                               "again") from None
            cached = self.__dict__["_config"] = (key, cfg)
        return cached[1]

    def load_model(self, *, device: str = "cpu") -> tuple[Any, Any]:
        """The run's model as the pipeline built it: ``(adapter, classifier)``.

        :func:`audit.forward.load_classifier` on :attr:`config` with the run's class names (a
        CLIP becomes the same ZeroShotHead) under the run's seed, so a model without a checkpoint
        gets the same initial weights; the caller's random state is left as it was. A fitted probe
        head (``model.probe``) is read from the run's ``probe_head.safetensors``, not fitted again;
        the fingerprint then covers backbone and head. Only live
        probing needs this: reading a run never loads its model.

        Raises:
            RunError: the run's config does not parse, or the model that loads now is not the one
                that was audited (its weights' fingerprint differs from run.json's).
            AuditError: the model cannot be loaded (e.g. its checkpoint is gone).
        """
        import torch

        from audit.forward import load_classifier

        config = self.config
        head = None
        if config.model.probe is not None and (self.meta.get("model") or {}).get("probe", {}).get("source") == "fitted":
            from audit.models.probe import HEAD_FILE

            head = self.path / HEAD_FILE  # the fitted head as audited: never fitted again
            if not head.is_file():
                raise RunError(f"{self.path}: the run's probe head {HEAD_FILE} is missing; run the audit again")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.stats.seed)
            adapter, classifier = load_classifier(config, self.class_names or None, device=device, probe_head=head)
        recorded = (self.meta.get("model") or {}).get("fingerprint")
        if recorded and adapter.fingerprint != recorded:  # live maps of another model would be told as this run's
            raise RunError(f"{self.path}: the model that loads now ({config.model.spec}, fingerprint "
                           f"{adapter.fingerprint}) is not the audited one (fingerprint {recorded}); restore the "
                           "checkpoint the run used")
        return adapter, classifier

    # -- tables ------------------------------------------------------------------
    def table_path(self, name: str) -> Path:
        return self.path / "tables" / f"{name}.parquet"

    def has_table(self, name: str) -> bool:
        return self.table_path(name).is_file()

    def write_table(self, name: str, df: Any) -> None:
        write_table(self.table_path(name), df)
        if name not in self.meta["tables"]:
            self.meta["tables"].append(name)

    def table(self, name: str, columns: list[str] | None = None):
        """Read a table as a pandas DataFrame."""
        import pandas as pd

        p = self.table_path(name)
        if not p.is_file():
            have = ", ".join(sorted(x.stem for x in (self.path / "tables").glob("*.parquet"))) or "none"
            raise RunError(f"run {self.path} has no table {name!r} (tables: {have})")
        return pd.read_parquet(p, columns=columns)

    def section(self, name: str) -> Any:
        """One section of the run's config (``stats``, ``explain``, ``clip`` ...) as its pydantic model.

        Only that section is parsed: a section the run does not record (a run assembled by hand) gets
        its defaults, from the config class itself; a recorded section that does not parse is a RunError.
        """
        from pydantic import BaseModel, ValidationError

        from audit.config import AuditConfig

        field = AuditConfig.model_fields[name]
        model = field.annotation
        raw = (self.meta.get("config") or {}).get(name)
        if raw is None:  # not recorded (a run assembled by hand): the section's defaults
            return field.default_factory() if field.default_factory is not None else field.default
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return raw
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise RunError(f"{self.path / 'run.json'}: config.{name} does not parse with this vision-audit "
                           f"({exc.errors()[0].get('loc')}: {exc.errors()[0].get('msg')}); run the audit again") from None

    def findings(self):
        """The findings ledger (:mod:`audit.findings`): the stored ``findings`` table, or, for a run
        written before it existed, the same ledger computed from the run's tables."""
        if self.has_table("findings"):
            return self.table("findings")
        from audit.findings import findings_for_run

        return findings_for_run(self)

    def headline(self, n: int | None = None) -> list[str]:
        """The first sentences of the findings ledger (what every surface leads with)."""
        from audit.findings import DEFAULT_HEADLINE, headline

        return headline(self.findings(), n or DEFAULT_HEADLINE)

    def tables(self) -> list[str]:
        return sorted(x.stem for x in (self.path / "tables").glob("*.parquet"))

    # -- arrays --------------------------------------------------------------------
    def write_maps(self, method: str, maps: Any, row_ids: Any, *, metadata: dict[str, str] | None = None) -> None:
        """Store final maps (M, gh, gw) on the patch grid, keyed by row id.

        float16 unless a finite value lies outside float16's range (raw gradient maps can): then
        float32, so storage never turns a finite value into Inf.
        """
        import torch

        m = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
        r = row_ids if isinstance(row_ids, torch.Tensor) else torch.as_tensor(np.asarray(row_ids), dtype=torch.int64)
        finite = m[torch.isfinite(m)]
        fits = finite.numel() == 0 or float(finite.abs().max()) < float(torch.finfo(torch.float16).max)
        stored = m.to(torch.float16 if fits else torch.float32)
        write_arrays(self.path / "maps" / f"{method}.safetensors", {"maps": stored, "row_id": r}, metadata)
        if method not in self.meta["methods"]:
            self.meta["methods"].append(method)

    def maps(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """``(maps (M, gh, gw) float16, row_id (M,))`` for ``method``."""
        p = self.path / "maps" / f"{method}.safetensors"
        if not p.is_file():
            raise RunError(f"run {self.path} has no maps for method {method!r} (stored: {', '.join(self.methods) or 'none'})")
        d = read_arrays(p)
        return d["maps"], d["row_id"]

    def map_for(self, method: str, row_id: int) -> np.ndarray | None:
        maps, rows = self._maps_cached(method)
        idx = np.nonzero(rows == row_id)[0]
        return None if idx.size == 0 else maps[idx[0]]

    def _maps_cached(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        cache = self.__dict__.setdefault("_map_cache", {})
        if method not in cache:
            cache[method] = self.maps(method)
        return cache[method]

    def write_array_file(self, name: str, arrays: dict[str, Any]) -> None:
        write_arrays(self.path / "arrays" / f"{name}.safetensors", arrays)

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        p = self.path / "arrays" / f"{name}.safetensors"
        if not p.is_file():
            raise RunError(f"run {self.path} has no arrays {name!r}")
        return read_arrays(p)

    def has_arrays(self, name: str) -> bool:
        return (self.path / "arrays" / f"{name}.safetensors").is_file()

    # -- images ------------------------------------------------------------------
    def image_path(self, row_id: int) -> Path:
        samples = self.__dict__.get("_samples")
        if samples is None:
            samples = self.table("samples").set_index("row_id")
            self.__dict__["_samples"] = samples
        return Path(samples.loc[row_id, "path"])

    def __repr__(self) -> str:
        return f"<Run {self.path} model={self.name} status={self.meta.get('status')}>"

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
            for k, v in [
                ("path", self.path),
                ("model", self.meta.get("model", {}).get("spec")),
                ("fingerprint", self.meta.get("model", {}).get("fingerprint")),
                ("images", self.meta.get("dataset", {}).get("n_used")),
                ("methods", ", ".join(self.methods)),
                ("status", self.meta.get("status")),
            ]
        )
        heads = "".join(f"<li>{escape(h)}</li>" for h in self.headline())
        return f"<table>{rows}</table><ul>{heads}</ul>"


def find_runs(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[str]]:
    """Run directories named by ``paths``: a directory with run.json is a run; one without stands
    for the runs in its subdirectories (``runs/demo`` opens every demo run).

    Returns:
        ``(runs, problems)``: absolute run paths in the given order (duplicates dropped) and one
        message per path that is neither a run nor holds runs.
    """
    runs: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        p = Path(raw).expanduser().resolve()
        if (p / "run.json").is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / "run.json").is_file())
            if not found:
                problems.append(f"{p} holds no run (no run.json in it or its subdirectories)")
        else:
            found = []
            problems.append(f"{p} does not exist")
        runs.extend(f for f in found if f not in runs)
    return runs, problems
