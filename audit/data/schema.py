"""The manifest's schema: the standard columns and the map from a source's columns onto them.

:class:`ColumnMap` is the one type for "which column holds what": ``load_manifest(columns=...)``
takes it, and the audit config's ``data.columns`` is a :class:`ColumnMap` too
(:class:`audit.config.DataConfig`). This module needs only pydantic, so the config can import
it without importing pandas or the image decoders.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["SAMPLE_COLUMNS", "STANDARD_COLUMNS", "CheckLevel", "ColumnMap", "ManifestFormat"]

#: Fixed columns of ``Manifest.df`` (group columns go between ``label`` and ``mask_path``).
STANDARD_COLUMNS = ("row_id", "image_id", "path", "label", "mask_path")

ManifestFormat = Literal["auto", "csv", "parquet", "imagefolder"]
CheckLevel = Literal["header", "full", "none"]


class ColumnMap(BaseModel):
    """Which source columns hold the image path, label, group attributes, mask and id.

    Attributes:
        image: column with the image path (relative to ``root`` or absolute).
        label: column with the class label, or ``None`` for unlabelled data.
        groups: columns with group attributes (e.g. ``["age", "gender", "race"]``).
        mask: column with a region-mask path (same rules as ``image``), or ``None``.
        id: column with a unique image id; ``None`` uses the 0-based row number.

    Example (CelebA's attribute table, -1/1 columns):
        >>> ColumnMap(image="image_id", label="Smiling", groups=["Male", "Young"]).groups
        ['Male', 'Young']
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = "path"
    label: str | None = None
    groups: list[str] = Field(default_factory=list)
    mask: str | None = None
    id: str | None = None

    @field_validator("image", "label", "mask", "id")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("a column name cannot be empty")
        return v

    @field_validator("groups")
    @classmethod
    def _groups_ok(cls, v: list[str]) -> list[str]:
        if any(not g.strip() for g in v):
            raise ValueError("a group column name cannot be empty")
        dup = sorted({g for g in v if v.count(g) > 1})
        if dup:
            raise ValueError(f"group columns listed twice: {dup}")
        return v

    @model_validator(mode="after")
    def _distinct_paths(self) -> ColumnMap:
        if self.mask is not None and self.mask == self.image:
            raise ValueError("mask and image cannot be the same column")
        return self


#: The column map of the manifest written by :func:`make_sample_images`.
SAMPLE_COLUMNS = ColumnMap(image="path", label="label", groups=["background", "site"], mask="mask")
