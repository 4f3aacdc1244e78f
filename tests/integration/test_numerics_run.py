"""A run whose method yields NaN maps for some images: they are named per image, left out of the
scores, and the rest of the run is complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from audit.pipeline import run_audit
from audit.registry import METHODS

from .conftest import config_dict, make_dataset


def _rollout_nan_first(adapter, images, *, target=None, **params):
    """Rollout, with the first image of every batch overflowed to NaN (as fp16 might)."""
    maps = METHODS.get("rollout")(adapter, images, target=target, **params).clone()
    maps[0] = float("nan")
    return maps


_rollout_nan_first.target_free = True  # type: ignore[attr-defined]


def test_nan_maps_are_reported_per_image_and_not_scored(tmp_path: Path, monkeypatch) -> None:
    from audit.config import parse_config
    from audit.report.summary import build_summary

    METHODS.names()  # load the built-in methods, then add the test method for this test only
    monkeypatch.setitem(METHODS._items, "test_nan_first", _rollout_nan_first)
    manifest = make_dataset(tmp_path / "data", 12)
    cfg = config_dict(manifest, tmp_path / "run", batch_size=4)
    cfg["explain"] = {"methods": ["rollout", "test_nan_first"], "max_images": 12, "faithfulness": True,
                      "faithfulness_steps": 4, "sanity": False}
    run = run_audit(parse_config(cfg))
    assert run.meta["status"] == "complete"
    quality = run.table("map_quality")
    assert set(quality["method"]) == {"test_nan_first"}
    maps, rows = run.maps("test_nan_first")
    bad_rows = sorted(int(r) for r, m in zip(rows, maps) if not np.isfinite(m).all())
    assert sorted(quality["row_id"].tolist()) == bad_rows and len(bad_rows) == 3  # one per batch of 4
    assert quality["problem"].str.contains("NaN/Inf").all()
    faith = run.table("faithfulness")
    f_bad = faith[(faith.method == "test_nan_first") & faith.row_id.isin(bad_rows)]
    assert len(f_bad) == 3 and f_bad["deletion_auc"].isna().all() and (f_bad["map_problem"] != "").all()
    f_ok = faith[(faith.method == "rollout")]
    assert f_ok["deletion_auc"].notna().all() and (f_ok["map_problem"] == "").all()
    summ = run.table("faithfulness_summary").set_index(["method", "metric"])
    assert summ.loc[("test_nan_first", "deletion_auc"), "n"] == 9
    assert summ.loc[("rollout", "deletion_auc"), "n"] == 12
    # the good maps of the same method equal rollout's maps (same images, same order)
    r_maps, r_rows = run.maps("rollout")
    ok = ~np.isin(rows, bad_rows)
    np.testing.assert_array_equal(rows, r_rows)
    torch.testing.assert_close(torch.as_tensor(maps[ok]), torch.as_tensor(r_maps[ok]))
    lim = " ".join(build_summary(run).limitations)
    assert "test_nan_first: 3 of 12 maps are not usable" in lim and str(bad_rows[0]) in lim
