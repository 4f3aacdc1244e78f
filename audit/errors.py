"""Exceptions raised by vision-audit.

Every error meant for a user names the thing that is wrong (row, file, field,
model spec) and says what to do. The CLI maps :class:`UsageError` subclasses to
exit code 2 ("unusable input") and other :class:`AuditError` to exit code 1.
Message texts are asserted in tests: change them deliberately.
"""

from __future__ import annotations


class AuditError(Exception):
    """Base class of every error vision-audit raises on purpose."""

    exit_code: int = 1


class UsageError(AuditError):
    """The input (config, manifest, path, spec, policy) cannot be used. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A config or policy file is invalid; the message names the field."""


class ModelLoadError(UsageError):
    """A model spec or checkpoint cannot be loaded (bad spec, no network, head mismatch)."""


class UnsafeCheckpointError(ModelLoadError):
    """A checkpoint would execute code when loaded (pickle payload); refused."""


class ManifestError(UsageError):
    """A manifest has problems; ``problems`` lists every one with its row and file."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            shown = "\n".join(f"  - {p}" for p in self.problems[:50])
            more = len(self.problems) - 50
            if more > 0:
                shown += f"\n  ... and {more} more"
            message = f"{message}\n{shown}"
        super().__init__(message)


class ImageDecodeError(UsageError):
    """One image cannot be decoded (truncated, zero bytes, bomb-sized, unknown format)."""


class CaptureError(AuditError):
    """Attention capture failed (e.g. fewer attention maps captured than blocks)."""


class ExplainError(AuditError):
    """An explanation method cannot run with the given model/target/parameters."""


class RunError(AuditError):
    """A run directory is missing, incomplete or of an unknown schema version."""


class NumericsError(AuditError):
    """NaN or Inf found in outputs, maps or gradients."""
