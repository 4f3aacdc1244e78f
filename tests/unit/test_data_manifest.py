"""load_manifest: FairFace / CelebA shapes, every validation problem, skip_bad, ImageFolder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.data import SAMPLE_COLUMNS, ColumnMap, Manifest, load_manifest, make_sample_images
from audit.errors import ConfigError, ManifestError

ROW_NOTE = "rows are 1-based data rows; the header line is not counted"


def img(path: Path, seed: int = 0, fmt: str | None = None, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"))
    return path


def bomb_png(path: Path, w: int = 100_000, h: int = 100_000) -> Path:
    """A PNG header declaring w x h pixels and no data (nothing large is allocated)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- real-world shapes


def test_fairface_shaped_csv(tmp_path: Path) -> None:
    rows = [
        ("train/1.jpg", "50-59", "Male", "East Asian", "True"),
        ("train/2.jpg", "30-39", "Female", "Indian", "False"),
        ("train/3.jpg", "3-9", "Female", "Latino_Hispanic", "True"),
        ("train/4.jpg", "20-29", "Male", "Southeast Asian", "True"),
        ("train/5.jpg", "more than 70", "Male", "Middle Eastern", "False"),
    ]
    for i, r in enumerate(rows):
        img(tmp_path / r[0], seed=i)
    text = "file,age,gender,race,service_test\n" + "".join(",".join(r) + "\n" for r in rows)
    csv = write_csv(tmp_path / "fairface_label_val.csv", text)
    m = load_manifest(csv, columns={"image": "file", "groups": ["age", "gender", "race"]})
    assert isinstance(m, Manifest) and len(m) == 5 and m.n_input_rows == 5 and m.skipped == []
    assert list(m.df.columns) == ["row_id", "image_id", "path", "label", "age", "gender", "race", "mask_path",
                                  "service_test"]
    assert m.df["row_id"].dtype == np.int64 and m.df["row_id"].tolist() == [0, 1, 2, 3, 4]
    assert m.df["image_id"].tolist() == ["0", "1", "2", "3", "4"]
    assert m.df["path"].tolist() == [str(tmp_path / r[0]) for r in rows]
    assert m.df["age"].tolist() == [r[1] for r in rows]  # "3-9" stays text, not a date
    assert m.df["race"].tolist() == [r[3] for r in rows]
    assert m.label_column is None and m.df["label"].isna().all() and m.class_names == []
    assert m.group_columns == ["age", "gender", "race"] and m.extra_columns == ["service_test"]
    test = m.subset(where={"service_test": True})
    assert test.df["row_id"].tolist() == [0, 2, 3]
    assert m.subset(where={"gender": ["Female"], "service_test": "True"}).df["row_id"].tolist() == [2]


CELEBA_ATTRS = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young"]


def test_celeba_attribute_table(tmp_path: Path) -> None:
    assert len(CELEBA_ATTRS) == 40
    rng = np.random.default_rng(1)
    vals = rng.choice([-1, 1], size=(6, 40))
    lines = ["image_id," + ",".join(CELEBA_ATTRS)]
    for i in range(6):
        name = f"{i + 1:06d}.jpg"
        img(tmp_path / "img_align_celeba" / name, seed=i)
        lines.append(name + "," + ",".join(str(v) for v in vals[i]))
    csv = write_csv(tmp_path / "list_attr_celeba.csv", "\n".join(lines) + "\n")
    m = load_manifest(
        csv,
        columns=ColumnMap(image="image_id", id="image_id", label="Smiling", groups=["Male", "Young"]),
        root=tmp_path / "img_align_celeba",
    )
    smiling, male = CELEBA_ATTRS.index("Smiling"), CELEBA_ATTRS.index("Male")
    assert m.df["label"].tolist() == [str(v) for v in vals[:, smiling]]
    assert m.df["Male"].tolist() == [str(v) for v in vals[:, male]]
    assert set(m.class_names) <= {"-1", "1"} and m.class_names == sorted(m.class_names)
    assert m.df["image_id"].tolist() == [f"{i + 1:06d}.jpg" for i in range(6)]
    assert len(m.extra_columns) == 40 - 3 and "Eyeglasses" in m.df.columns
    assert m.df["path"].iloc[0] == str(tmp_path / "img_align_celeba" / "000001.jpg")


# ---------------------------------------------------------------- problems


def test_missing_images_all_reported(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    img(tmp_path / "c.png")
    csv = write_csv(tmp_path / "m.csv", "path,g\na.png,x\nb.png,x\nc.png,y\nd.png,y\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"groups": ["g"]})
    e = ei.value
    assert len(e.problems) == 2
    assert e.problems[0].startswith("row 2, file 'b.png': file not found")
    assert e.problems[1].startswith("row 4, file 'd.png': file not found")
    assert str(tmp_path / "d.png") in e.problems[1]
    assert ROW_NOTE in str(e) and "skip_bad=True" in str(e)


def test_skip_bad_records_every_bad_row(tmp_path: Path) -> None:
    img(tmp_path / "ok1.png")
    img(tmp_path / "ok2.jpg", seed=2)
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    trunc = img(tmp_path / "trunc.png", seed=3, size=(64, 64))
    trunc.write_bytes(trunc.read_bytes()[:200])
    bomb_png(tmp_path / "bomb.png")
    csv = write_csv(
        tmp_path / "m.csv",
        "path,label\nok1.png,a\nzero.png,a\ntext.jpg,b\nmissing.png,b\ntrunc.png,a\nbomb.png,b\nok2.jpg,b\n",
    )
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"label": "label"}, check_images="full")
    assert [p.split(",")[0] for p in ei.value.problems] == ["row 2", "row 3", "row 4", "row 5", "row 6"]
    m = load_manifest(csv, columns={"label": "label"}, check_images="full", skip_bad=True)
    assert m.df["row_id"].tolist() == [0, 6] and m.class_names == ["a", "b"]
    assert len(m) + len(m.skipped) == m.n_input_rows == 7
    by_row = {s["row"]: s for s in m.skipped}
    assert sorted(by_row) == [2, 3, 4, 5, 6]
    assert by_row[2]["row_id"] == 1 and by_row[2]["path"] == str(tmp_path / "zero.png")
    assert "zero bytes" in by_row[2]["reason"]
    assert "not a recognised image format" in by_row[3]["reason"]
    assert "file not found" in by_row[4]["reason"]
    assert "truncated" in by_row[5]["reason"]
    assert "100000x100000" in by_row[6]["reason"] and "max_pixels" in by_row[6]["reason"]
    # header-only checking cannot see truncation: the row is kept and fails later, at load time
    m2 = load_manifest(csv, columns={"label": "label"}, check_images="header", skip_bad=True)
    assert 4 in m2.df["row_id"].tolist() and len(m2.skipped) == 4


def test_wrong_extension_png_named_jpg_is_noted_text_named_jpg_is_a_problem(tmp_path: Path) -> None:
    img(tmp_path / "png_inside.jpg", fmt="PNG")
    (tmp_path / "fake.jpg").write_text("not an image")
    csv = write_csv(tmp_path / "m.csv", "path\npng_inside.jpg\nfake.jpg\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv)
    assert len(ei.value.problems) == 1
    assert ei.value.problems[0].startswith("row 2, file 'fake.jpg': content is not a recognised image format")
    m = load_manifest(csv, skip_bad=True)
    assert len(m) == 1
    assert any("row 1, file 'png_inside.jpg': content is PNG but the suffix is '.jpg'" in n for n in m.notes)


def test_unknown_columns_listed_with_suggestion(tmp_path: Path) -> None:
    img(tmp_path / "a.jpg")
    csv = write_csv(tmp_path / "m.csv", "file,age,gender,race\na.jpg,20-29,Male,White\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"image": "file", "groups": ["gendr", "race"], "label": "ethnicity"})
    probs = ei.value.problems
    assert len(probs) == 2
    assert probs[0].startswith("unknown column 'ethnicity' (mapped as label); available columns: file, age, gender, race")
    assert probs[1] == ("unknown column 'gendr' (mapped as group); available columns: file, age, gender, race; "
                        "did you mean 'gender'?")


def test_column_map_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="grups"):
        load_manifest(pd.DataFrame({"path": ["x"]}), columns={"grups": ["a"]})
    with pytest.raises(ConfigError, match="listed twice"):
        load_manifest(pd.DataFrame({"path": ["x"]}), columns={"groups": ["a", "a"]})


def test_nan_groups_problem_or_explicit_missing_group(tmp_path: Path) -> None:
    for n in "abc":
        img(tmp_path / f"{n}.png")
    csv = write_csv(tmp_path / "m.csv", "path,race,gender\na.png,White,Male\nb.png,Black,\nc.png,,Female\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"groups": ["race", "gender"]})
    assert ei.value.problems == [
        ("row 2, file 'b.png': missing value in group column 'gender'; pass missing_group='(missing)' to keep "
        "such rows as an explicit group"),
        ("row 3, file 'c.png': missing value in group column 'race'; pass missing_group='(missing)' to keep "
        "such rows as an explicit group"),
    ]
    m = load_manifest(csv, columns={"groups": ["race", "gender"]}, missing_group="(missing)")
    assert m.df["race"].tolist() == ["White", "Black", "(missing)"]
    assert m.df["gender"].tolist() == ["Male", "(missing)", "Female"]
    m2 = load_manifest(csv, columns={"groups": ["race", "gender"]}, skip_bad=True)
    assert m2.df["row_id"].tolist() == [0] and [s["row"] for s in m2.skipped] == [2, 3]


def test_nan_label_and_all_missing_group_column(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    img(tmp_path / "b.png")
    csv = write_csv(tmp_path / "m.csv", "path,label,site\na.png,cat,\nb.png,,\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"label": "label", "groups": ["site"]}, missing_group="(missing)", skip_bad=True)
    probs = ei.value.problems
    assert probs[0] == "group column 'site' is empty: all 2 values are missing; choose another column or fill it in"
    assert probs[1] == "row 2, file 'b.png': missing label (empty cell in column 'label')"
    assert "column-level problems cannot be skipped" in str(ei.value)


def test_mixed_type_labels_and_groups(tmp_path: Path) -> None:
    for n in "abcd":
        img(tmp_path / f"{n}.png")
    df = pd.DataFrame({"path": ["a.png", "b.png", "c.png", "d.png"], "g": [1, "1", "2", 2.0],
                       "y": [0, 1, 1, 0]}, dtype=object)
    with pytest.raises(ManifestError) as ei:
        load_manifest(df, root=tmp_path, columns={"groups": ["g"]})
    assert ei.value.problems == [
        ("group column 'g' holds the number 1 (row 1) and the string '1' (row 2), which would both become '1'; "
        "store the column as one type (all text or all numbers)"),
        ("group column 'g' holds the number 2 (row 4) and the string '2' (row 3), which would both become '2'; "
        "store the column as one type (all text or all numbers)"),
    ]
    # numbers and non-numeric strings do not collide: normalised to text, with a note
    df2 = df.assign(g=[1, "male", 2.0, True])
    m = load_manifest(df2, root=tmp_path, columns={"groups": ["g"], "label": "y"})
    assert m.df["g"].tolist() == ["1", "male", "2", "True"]
    assert m.df["label"].tolist() == ["0", "1", "1", "0"] and m.class_names == ["0", "1"]
    assert any("mixes bool, number, str values" in n for n in m.notes)
    # in a CSV everything is text: '1' and '1.0' are kept apart, with a note
    csv = write_csv(tmp_path / "m.csv", "path,g\na.png,1\nb.png,1.0\n")
    m3 = load_manifest(csv, columns={"groups": ["g"]})
    assert m3.df["g"].tolist() == ["1", "1.0"]
    assert any("writes the number 1 in different ways ('1', '1.0')" in n for n in m3.notes)


def test_duplicate_ids(tmp_path: Path) -> None:
    for n in "abc":
        img(tmp_path / f"{n}.png")
    csv = write_csv(tmp_path / "m.csv", "id,path\nx1,a.png\nx2,b.png\nx1,c.png\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"id": "id"})
    assert ei.value.problems == [
        "row 3, file 'c.png': duplicate id 'x1' (first used in row 1); ids must be unique"
    ]
    m = load_manifest(csv, columns={"id": "id"}, skip_bad=True)
    assert m.df["image_id"].tolist() == ["x1", "x2"]
    assert m.skipped == [{"row": 3, "row_id": 2, "path": str(tmp_path / "c.png"),
                          "reason": "duplicate id 'x1' (first used in row 1); ids must be unique"}]


def test_non_utf8_csv(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    csv = tmp_path / "latin.csv"
    csv.write_bytes("path,name\na.png,José\n".encode("latin-1"))
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"groups": ["name"]})
    msg = str(ei.value)
    assert "latin.csv" in msg and "is not valid utf-8 text: byte 0xe9 on line 2" in msg
    assert "encoding='latin-1'" in msg
    m = load_manifest(csv, columns={"groups": ["name"]}, encoding="latin-1")
    assert m.df["name"].tolist() == ["José"]
    with pytest.raises(ManifestError, match="unknown encoding 'klingon'"):
        load_manifest(csv, encoding="klingon")


def test_file_name_not_utf8_on_disk_is_explained(tmp_path: Path) -> None:
    """A file whose name on disk is latin-1 bytes: "not found", with the reason and the fix."""
    img(tmp_path / "a.png")
    src = img(tmp_path / "tmp.png")
    os.rename(bytes(src), bytes(tmp_path) + b"/Jos\xe9.png")  # not valid UTF-8
    csv = write_csv(tmp_path / "m.csv", "path,g\na.png,x\nJosé.png,y\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"groups": ["g"]})
    (problem,) = ei.value.problems
    assert problem.startswith("row 2, file 'José.png': file not found")
    assert "in latin-1 bytes exists (b'" in problem and "Jos\\xe9.png" in problem and "convmv -f latin-1" in problem
    m = load_manifest(csv, columns={"groups": ["g"]}, skip_bad=True)
    assert m.df["g"].tolist() == ["x"] and len(m.skipped) == 1 and "convmv" in m.skipped[0]["reason"]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    csv = tmp_path / "bom.csv"
    csv.write_bytes("\ufeffpath,g\na.png,é\n".encode("utf-8"))
    m = load_manifest(csv, columns={"groups": ["g"]})
    assert m.df["g"].tolist() == ["é"]


def test_empty_manifests(tmp_path: Path) -> None:
    header_only = write_csv(tmp_path / "h.csv", "path,label\n")
    with pytest.raises(ManifestError, match=r"h\.csv' is empty: it has a header \(path, label\) but no data rows"):
        load_manifest(header_only, skip_bad=True)
    nothing = write_csv(tmp_path / "z.csv", "")
    with pytest.raises(ManifestError, match=r"z\.csv' is empty \(no header line and no rows\)"):
        load_manifest(nothing)
    with pytest.raises(ManifestError, match="no data rows"):
        load_manifest(pd.DataFrame({"path": pd.Series([], dtype=object)}))


def test_all_rows_bad_with_skip_bad_raises(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", "path\nx.png\ny.png\n")
    with pytest.raises(ManifestError, match="all 2 rows have problems") as ei:
        load_manifest(csv, skip_bad=True)
    assert [p[:5] for p in ei.value.problems] == ["row 1", "row 2"]


def test_very_long_path_is_a_clear_problem(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    long_name = "x" * 300 + ".png"
    deep = "/".join(["d" * 200] * 25) + "/y.png"  # > PATH_MAX
    csv = write_csv(tmp_path / "m.csv", f"path\na.png\n{long_name}\n{deep}\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv)
    probs = ei.value.problems
    assert len(probs) == 2
    assert probs[0].startswith("row 2, file 'xxx") and "path is too long for this operating system" in probs[0]
    assert probs[1].startswith("row 3, file 'ddd") and "path is too long" in probs[1]
    assert "more characters" in probs[1]  # the 5000-character path is shortened in the message
    m = load_manifest(csv, skip_bad=True)
    assert len(m) == 1 and [s["row"] for s in m.skipped] == [2, 3]


def test_absolute_paths_and_root(tmp_path: Path) -> None:
    a = img(tmp_path / "imgs" / "a.png")
    img(tmp_path / "elsewhere" / "b.png")
    csv = write_csv(tmp_path / "m.csv", f"path\n{a}\nb.png\n")
    m = load_manifest(csv, root=tmp_path / "elsewhere")
    assert m.df["path"].tolist() == [str(a), str(tmp_path / "elsewhere" / "b.png")]
    assert m.root == str(tmp_path / "elsewhere")


def test_labels_outside_class_names(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    img(tmp_path / "b.png")
    csv = write_csv(tmp_path / "m.csv", "path,y\na.png,cat\nb.png,cow\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"label": "y"}, class_names=["dog", "cat"])
    assert ei.value.problems == ["row 2, file 'b.png': label 'cow' is not one of class_names (2 classes)"]
    m = load_manifest(csv, columns={"label": "y"}, class_names=["dog", "cat", "cow"])
    assert m.class_names == ["dog", "cat", "cow"]


def test_masks_checked(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    img(tmp_path / "b.png")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "ma.png")
    (tmp_path / "mb.png").write_bytes(b"")
    csv = write_csv(tmp_path / "m.csv", "path,mask\na.png,ma.png\nb.png,mb.png\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv, columns={"mask": "mask"})
    assert ei.value.problems == ["row 2, file 'b.png': mask 'mb.png': file is empty (zero bytes)"]


def test_parquet_and_dataframe_sources(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    img(tmp_path / "b.png")
    df = pd.DataFrame({"path": ["a.png", "b.png"], "label": [3, 7], "site": [1.0, 2.0]})
    df.to_parquet(tmp_path / "m.parquet")
    m = load_manifest(tmp_path / "m.parquet", columns={"label": "label", "groups": ["site"]})
    assert m.df["label"].tolist() == ["3", "7"] and m.df["site"].tolist() == ["1", "2"]
    assert m.source == str(tmp_path / "m.parquet")
    m2 = load_manifest(df, root=tmp_path, columns={"label": "label", "groups": ["site"]})
    assert m2.df.drop(columns=[]).equals(m.df) and m2.source is None


def test_imagefolder_with_sidecar(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    img(root / "dog" / "d1.png")
    img(root / "cat" / "c2.jpg")
    img(root / "cat" / "c1.png")
    (root / "cat" / "README.txt").write_text("notes")
    (root / "empty").mkdir()
    m = load_manifest(root)
    assert m.df["path"].tolist() == [str(root / "cat/c1.png"), str(root / "cat/c2.jpg"), str(root / "dog/d1.png")]
    assert m.df["label"].tolist() == ["cat", "cat", "dog"]
    assert m.class_names == ["cat", "dog", "empty"] and m.group_columns == []
    assert any("README.txt" in n for n in m.notes) and any("'empty' has no images" in n for n in m.notes)
    side = write_csv(tmp_path / "groups.csv", "file,light\ncat/c1.png,day\ncat/c2.jpg,night\ndog/d1.png,day\n")
    m2 = load_manifest(root, columns={"image": "file", "groups": ["light"]}, sidecar=side)
    assert m2.df["light"].tolist() == ["day", "night", "day"]
    with pytest.raises(ManifestError, match="sidecar="):
        load_manifest(root, columns={"groups": ["light"]})
    side2 = write_csv(tmp_path / "g2.csv", "file,light\ncat/c1.png,day\n")
    with pytest.raises(ManifestError) as ei:
        load_manifest(root, columns={"image": "file", "groups": ["light"]}, sidecar=side2)
    assert "rows number the images in sorted order, 1-based" in str(ei.value)
    assert ei.value.problems[0].startswith("row 2, file 'cat/c2.jpg': missing value in group column 'light'")


def test_fingerprint_shallow_and_deep(tmp_path: Path) -> None:
    a = img(tmp_path / "a.png", seed=1)
    img(tmp_path / "b.png", seed=2)
    csv = write_csv(tmp_path / "m.csv", "path,y\na.png,p\nb.png,q\n")
    m = load_manifest(csv, columns={"label": "y"})
    f0, d0 = m.fingerprint(), m.fingerprint(deep=True)
    assert len(f0) == 64 and f0 != d0
    same = load_manifest(csv, columns={"label": "y"})
    assert same.fingerprint() == f0 and same.fingerprint(deep=True) == d0
    relabelled = load_manifest(write_csv(tmp_path / "m2.csv", "path,y\na.png,p\nb.png,p\n"), columns={"label": "y"})
    assert relabelled.fingerprint() != f0
    # same size, same mtime, different bytes: only the deep fingerprint sees it
    st = os.stat(a)
    data = bytearray(a.read_bytes())
    data[-20] ^= 0xFF
    a.write_bytes(bytes(data))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load_manifest(csv, columns={"label": "y"}, check_images="none")
    assert again.fingerprint() == f0 and again.fingerprint(deep=True) != d0
    # moving the whole dataset keeps the fingerprint (paths are hashed relative to root)
    moved = tmp_path / "moved"
    moved.mkdir()
    for n in ("a.png", "b.png", "m.csv"):
        os.replace(tmp_path / n, moved / n)
    assert load_manifest(moved / "m.csv", columns={"label": "y"}, check_images="none").fingerprint(deep=True) == \
        again.fingerprint(deep=True)


def test_repr_html_escapes_data(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    df = pd.DataFrame({"path": ["a.png"], "g": ["<script>alert(1)</script>"], "<b>x</b>": ["&"]})
    m = load_manifest(df, root=tmp_path, columns={"groups": ["g"]})
    h = m._repr_html_()
    assert "<script>" not in h and "&lt;script&gt;alert(1)&lt;/script&gt;" in h and "<b>x</b>" not in h


def test_sample_images_manifest(tmp_path: Path) -> None:
    path = make_sample_images(tmp_path / "sample", n=8, seed=0)
    m = load_manifest(path, columns=SAMPLE_COLUMNS, check_images="full")
    assert len(m) == 8 and m.class_names == ["circle", "square"] and m.has_masks
    assert set(m.df["background"]) == {"light", "dark"} and m.notes == []
    modes = []
    for p in m.df["path"]:
        with Image.open(p) as im:
            modes.append(im.mode)
    assert {"RGB", "L", "P", "RGBA", "I;16", "CMYK", "LA"} <= set(modes)
    assert make_sample_images(tmp_path / "again", n=8, seed=0).read_text() == path.read_text()
    assert m.run_metadata()["n_used"] == 8 and m.samples_table().columns.tolist() == [
        "row_id", "image_id", "path", "label", "background", "site", "mask_path"]
