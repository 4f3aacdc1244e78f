"""open_image / probe_image / load_mask: modes, EXIF, damaged files, bombs, PIL global state."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from audit.data.images import (
    DEFAULT_MAX_PIXELS,
    image_sha256,
    load_mask,
    open_image,
    probe_image,
    to_rgb,
)
from audit.errors import ImageDecodeError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, w: int = 100_000, h: int = 100_000) -> Path:
    """A PNG whose IHDR declares w x h RGB pixels, with no pixel data (nothing is allocated)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b""))
    return path


def noise(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def over_black(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Independent reference: colour composited on black, rounded half up."""
    return np.floor(c.astype(np.float64) * a.astype(np.float64)[..., None] / 255.0 + 0.5).astype(np.uint8)


def rgb(path_or_img) -> np.ndarray:
    img = open_image(path_or_img) if not isinstance(path_or_img, Image.Image) else to_rgb(path_or_img)
    assert img.mode == "RGB"
    return np.asarray(img)


# ---------------------------------------------------------------- modes


def test_mode_1_and_L(tmp_path: Path) -> None:
    im = Image.new("1", (2, 1))
    im.putdata([0, 1])
    im.save(tmp_path / "bw.png")
    np.testing.assert_array_equal(rgb(tmp_path / "bw.png")[0], [[0, 0, 0], [255, 255, 255]])
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(rgb(tmp_path / "l.png")[0], [[0, 0, 0], [77, 77, 77], [255, 255, 255]])


def test_mode_LA_composited_on_black(tmp_path: Path) -> None:
    im = Image.new("LA", (3, 1))
    im.putdata([(200, 128), (100, 255), (50, 0)])
    im.save(tmp_path / "la.png")
    out = rgb(tmp_path / "la.png")[0]
    exp = over_black(np.array([[200] * 3, [100] * 3, [50] * 3]), np.array([128, 255, 0]))
    np.testing.assert_array_equal(out, exp)
    assert out[0, 0] == 100 and out[2, 0] == 0


def test_mode_RGBA_composited_on_black(tmp_path: Path) -> None:
    data = np.array([[[255, 0, 100, 51], [10, 20, 30, 255], [200, 200, 200, 0]]], dtype=np.uint8)
    Image.fromarray(data, "RGBA").save(tmp_path / "rgba.png")
    out = rgb(tmp_path / "rgba.png")
    np.testing.assert_array_equal(out, over_black(data[..., :3], data[..., 3]))
    np.testing.assert_array_equal(out[0, 0], [51, 0, 20])


def test_mode_P_with_index_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 100, 50])
    im.putdata([0, 1])
    im.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as chk:
        assert chk.info["transparency"] == 0
    np.testing.assert_array_equal(rgb(tmp_path / "p.png")[0], [[0, 0, 0], [200, 100, 50]])


def test_mode_P_with_trns_bytes_partial_alpha(tmp_path: Path) -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([10, 20, 30, 200, 100, 50, 7, 8, 9])
    im.putdata([0, 1, 2])
    im.save(tmp_path / "p2.png", transparency=bytes([255, 128]))  # index 2: opaque (tRNS too short)
    out = rgb(tmp_path / "p2.png")[0]
    exp = over_black(np.array([[10, 20, 30], [200, 100, 50], [7, 8, 9]]), np.array([255, 128, 255]))
    np.testing.assert_array_equal(out, exp)
    np.testing.assert_array_equal(out[1], [100, 50, 25])


def test_mode_P_without_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([1, 2, 3, 250, 251, 252])
    im.putdata([1, 0])
    im.save(tmp_path / "p3.gif")
    np.testing.assert_array_equal(rgb(tmp_path / "p3.gif")[0], [[250, 251, 252], [1, 2, 3]])


def test_mode_I16_scaled_by_actual_range_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1000, 2000, 65535]], dtype=np.uint16)).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as chk:
        assert chk.mode.startswith("I;16")
    out = rgb(tmp_path / "a.png")[0, :, 0]
    ref = np.floor(np.array([0, 1000, 2000, 65535]) * 255 / 65535 + 0.5)
    np.testing.assert_array_equal(out, ref)
    assert out[-1] == 255 and out[1] == 4  # PIL's own convert would clip 1000 to 255
    Image.fromarray(np.array([[0, 1000, 2000]], dtype=np.uint16)).save(tmp_path / "b.png")
    np.testing.assert_array_equal(rgb(tmp_path / "b.png")[0, :, 0], [0, 128, 255])


def test_mode_I_and_F_scaled_by_range() -> None:
    i32 = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32), "I")
    np.testing.assert_array_equal(rgb(i32)[0, :, 0], [0, 128, 255])
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32), "F")
    np.testing.assert_array_equal(rgb(f)[0, :, 0], [0, 128, 255, 0])
    const = Image.fromarray(np.full((2, 2), 7, dtype=np.int32), "I")
    np.testing.assert_array_equal(rgb(const), np.full((2, 2, 3), 255))  # range [0, 7]


def test_mode_CMYK_and_YCbCr() -> None:
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0)])
    np.testing.assert_array_equal(rgb(cmyk)[0], [[255, 255, 255], [0, 255, 255]])
    y, cb, cr = 100, 128, 200
    ycc = Image.new("YCbCr", (1, 1), (y, cb, cr))
    # JFIF (ITU-R BT.601 full range) reference
    ref = [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)]
    np.testing.assert_allclose(rgb(ycc)[0, 0], np.clip(np.round(ref), 0, 255), atol=1)


def test_mode_RGB_roundtrip_exact(tmp_path: Path) -> None:
    im = noise()
    im.save(tmp_path / "n.png")
    np.testing.assert_array_equal(rgb(tmp_path / "n.png"), np.asarray(im))


# ---------------------------------------------------------------- EXIF


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    disp = np.zeros((30, 40, 3), dtype=np.uint8)  # displayed: 40 wide, 30 tall
    disp[...] = (0, 0, 255)
    disp[:10, :10] = (255, 0, 0)  # red block in the displayed top-left corner
    stored = Image.fromarray(disp).transpose(Image.Transpose.ROTATE_90)  # what a camera writes
    assert stored.size == (30, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    out = rgb(tmp_path / "rot.jpg").astype(int)
    assert out.shape == (30, 40, 3)
    assert out[3, 3, 0] > 200 and out[3, 3, 2] < 60  # red, top-left
    for y, x in [(3, 36), (26, 3), (26, 36)]:  # blue elsewhere: not merely transposed or flipped
        assert out[y, x, 2] > 200 and out[y, x, 0] < 60


# ---------------------------------------------------------------- damaged files


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_raises(tmp_path: Path, fmt: str, suffix: str) -> None:
    p = tmp_path / f"t{suffix}"
    noise().save(p, format=fmt)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"truncated") as ei:
        open_image(p)
    assert str(p) in str(ei.value)
    probe_image(p, level="header")  # the header alone is fine
    with pytest.raises(ImageDecodeError, match="truncated"):
        probe_image(p, level="full")


def test_truncated_raises_even_if_someone_set_load_truncated(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "t.png"
    noise().save(p)
    p.write_bytes(p.read_bytes()[:300])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError, match="truncated"):
        open_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_zero_byte_raises(tmp_path: Path) -> None:
    p = tmp_path / "z.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"zero bytes") as ei:
        open_image(p)
    assert "z.jpg" in str(ei.value)


def test_text_named_jpg_raises_and_png_named_jpg_opens(tmp_path: Path) -> None:
    txt = tmp_path / "notes.jpg"
    txt.write_text("this is not an image\n")
    with pytest.raises(ImageDecodeError, match=r"not a recognised image format") as ei:
        open_image(txt)
    assert "notes.jpg" in str(ei.value)
    png = tmp_path / "really_png.jpg"
    noise().save(png, format="PNG")
    info = probe_image(png)
    assert info.format == "PNG" and info.size == (64, 48)
    np.testing.assert_array_equal(rgb(png), np.asarray(noise()))


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r"file not found") as ei:
        open_image(tmp_path / "nope.png")
    assert "nope.png" in str(ei.value)


def test_damaged_header_raises(tmp_path: Path) -> None:
    p = bomb_png(tmp_path / "h.png", 10, 10)
    p.write_bytes(p.read_bytes()[:20])  # signature + part of IHDR
    with pytest.raises(ImageDecodeError, match=r"h\.png.*PNG header unreadable"):
        open_image(p)


def test_decompression_bomb_refused_without_touching_pil_global(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    p = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageDecodeError) as ei:
        open_image(p)
    msg = str(ei.value)
    assert "100000x100000" in msg and "10,000,000,000" in msg and "max_pixels" in msg and "bomb.png" in msg
    with pytest.raises(ImageDecodeError, match="max_pixels=1,000"):
        probe_image(p, max_pixels=1000)
    # a per-call limit above PIL's own (which Image.open would refuse) reads the header
    info = probe_image(p, max_pixels=10**11)
    assert info.size == (100_000, 100_000) and info.n_pixels == 10**10
    assert Image.MAX_IMAGE_PIXELS == before == DEFAULT_MAX_PIXELS
    with pytest.raises(Image.DecompressionBombError), Image.open(p):  # PIL itself would have refused
        pass


def test_small_limit_refuses_normal_image(tmp_path: Path) -> None:
    p = tmp_path / "n.png"
    noise().save(p)
    with pytest.raises(ImageDecodeError, match=r"64x48 = 3,072 pixels"):
        open_image(p, max_pixels=3000)
    assert open_image(p, max_pixels=3072).size == (64, 48)


# ---------------------------------------------------------------- masks and hashes


def test_load_mask_modes_and_resize(tmp_path: Path) -> None:
    arr = np.zeros((4, 6), dtype=np.uint8)
    arr[1:3, 2:5] = 1  # label-map style 0/1
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png")
    assert m.dtype == bool and m.shape == (4, 6)
    np.testing.assert_array_equal(m, arr > 0)
    big = load_mask(tmp_path / "m.png", size=(8, 12))
    np.testing.assert_array_equal(big, np.kron(arr > 0, np.ones((2, 2), dtype=bool)))
    col = np.zeros((4, 6, 3), dtype=np.uint8)
    col[0, 0] = (255, 255, 255)
    col[0, 1] = (30, 30, 30)  # dark but non-zero: outside for colour masks
    Image.fromarray(col).save(tmp_path / "c.png")
    mc = load_mask(tmp_path / "c.png")
    assert mc[0, 0] and not mc[0, 1] and mc.sum() == 1


def test_image_sha256(tmp_path: Path) -> None:
    import hashlib

    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 1000)
    assert image_sha256(p, chunk_size=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_open_image_closes_file(tmp_path: Path) -> None:
    # filterwarnings=error turns an unclosed-file ResourceWarning into a failure at gc
    import gc

    p = tmp_path / "n.png"
    noise().save(p)
    for _ in range(3):
        open_image(p)
        probe_image(p)
    gc.collect()
    buf = io.BytesIO()
    noise().save(buf, format="PNG")
    assert buf.tell() > 0
