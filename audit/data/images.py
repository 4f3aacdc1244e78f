"""Robust image decoding: every image becomes RGB the same way, or a clear error.

The rules (applied by :func:`open_image`, identical on every call):

* The format is identified from the file's content (PIL's plugins), never from its suffix.
* The declared size is checked against ``max_pixels`` *before* any pixel is decoded.
  PIL's global ``Image.MAX_IMAGE_PIXELS`` is never changed: files are identified with
  PIL's plugin table directly (the same loop as ``Image.open`` minus its global bomb check),
  so the limit is per call.
* Truncated data is an error. If another library set ``ImageFile.LOAD_TRUNCATED_IMAGES``
  (which makes PIL fill the missing part with grey), it is switched off for the duration of
  the decode under a lock and restored afterwards.
* The EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``).
* Only the first frame of a multi-frame file (GIF, TIFF, MPO) is used.
* Mode conversion to RGB:

  ======================  ================================================================
  mode                    conversion
  ======================  ================================================================
  RGB                     unchanged
  1, L, CMYK, YCbCr,      PIL's ``convert("RGB")`` (1 -> 0/255; CMYK naive, no ICC profile)
  HSV, LAB, RGBX
  P                       palette lookup; transparency (tRNS bytes or an index) gives alpha
  LA, PA, RGBA, La,       alpha composited on **black**: ``c * a / 255`` rounded half up
  RGBa, P + transparency  (premultiplied modes are un-premultiplied by PIL first)
  L / RGB + transparency  the colour key becomes fully transparent, i.e. black
  I;16*, I, F             scaled by the image's actual range to 0..255, never clipped:
                          ``round((x - lo) * 255 / (hi - lo))`` with ``lo = min(0, min x)``,
                          ``hi = max x`` (so a 16-bit 65535 maps to 255, and 0 stays black);
                          a constant image with ``hi <= lo`` is black; non-finite floats
                          count as ``lo``
  ======================  ================================================================
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps

from audit.errors import ImageDecodeError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageInfo",
    "image_sha256",
    "load_mask",
    "open_image",
    "probe_image",
    "same_format_family",
    "to_rgb",
]

#: PIL's own default (1024 * 1024 * 1024 // 4 // 3); the largest image decoded without asking.
DEFAULT_MAX_PIXELS = 89_478_485

_TRUNCATED_LOCK = threading.RLock()


@dataclass(frozen=True)
class ImageInfo:
    """What an image file declares in its header.

    Attributes:
        format: PIL format name from the content (e.g. ``"PNG"``, ``"JPEG"``, ``"MPO"``).
        mode: PIL mode of the first frame (e.g. ``"RGB"``, ``"I;16"``).
        size: ``(width, height)`` as declared.
        n_bytes: file size in bytes.
    """

    format: str
    mode: str
    size: tuple[int, int]
    n_bytes: int

    @property
    def n_pixels(self) -> int:
        return int(self.size[0]) * int(self.size[1])


def _fail(path: str | os.PathLike[str], reason: str) -> ImageDecodeError:
    """An ImageDecodeError naming the file; ``.path`` and ``.reason`` are kept for callers."""
    p = os.fspath(path)
    err = ImageDecodeError(f"image '{p}': {reason}")
    err.path = p  # type: ignore[attr-defined]
    err.reason = reason  # type: ignore[attr-defined]
    return err


def _identify(fp: IO[bytes], filename: str) -> tuple[ImageFile.ImageFile | None, str | None]:
    """Identify ``fp`` with PIL's plugin table, without PIL's global decompression-bomb check.

    Mirrors the loop in ``PIL.Image.open``; the size check is done by the caller against a
    per-call limit, so ``Image.MAX_IMAGE_PIXELS`` never has to be changed.

    Returns:
        The lazily opened image (or ``None``) and, when a plugin recognised the signature but
        failed to read the header, that plugin's error text.
    """
    Image.init()
    prefix = fp.read(16)
    failure: str | None = None
    for fmt in list(Image.ID):
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        factory, accept = entry
        try:
            ok = (not accept) or accept(prefix)
        except Exception:  # noqa: BLE001, S112 - a signature test that fails means "not this format"
            continue
        if isinstance(ok, str) or not ok:
            continue
        try:
            fp.seek(0)
            return factory(fp, filename), None
        except (SyntaxError, IndexError, TypeError, ValueError, EOFError, OSError, KeyError,
                struct.error, ZeroDivisionError) as e:
            # Image.open swallows the same family of errors and tries the next plugin.
            if failure is None and accept is not None:
                failure = f"{fmt} header unreadable ({type(e).__name__}: {e})"
            continue
    return None, failure


def _check_path(path: str | os.PathLike[str]) -> int:
    """Return the file size, or raise ImageDecodeError for missing / unreadable / empty files."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise _fail(p, "file not found") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise _fail(p, f"path is too long for this operating system ({len(p)} characters)") from None
        raise _fail(p, f"cannot read file ({e.strerror or e})") from None
    except (ValueError, UnicodeError) as e:  # embedded NUL byte, unencodable name
        raise _fail(p, f"invalid path ({e})") from None
    if not os.path.isfile(p):
        raise _fail(p, "not a regular file (is it a directory?)")
    if st.st_size == 0:
        raise _fail(p, "file is empty (zero bytes)")
    return int(st.st_size)


def _bomb_message(path: str, w: int, h: int, max_pixels: int) -> ImageDecodeError:
    return _fail(
        path,
        f"declares {w}x{h} = {w * h:,} pixels, more than max_pixels={max_pixels:,} "
        "(possible decompression bomb); if you trust this file, raise the limit with "
        "max_pixels=... (CLI: --max-pixels) or skip it with skip_bad=True",
    )


@contextmanager
def _opened(path: str | os.PathLike[str], *, max_pixels: int) -> Iterator[tuple[ImageFile.ImageFile, int]]:
    """Open, identify and size-check ``path``; yields the (lazy) PIL image and the file size."""
    p = os.fspath(path)
    n_bytes = _check_path(p)
    try:
        fp = builtins.open(p, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as e:
        raise _fail(p, f"cannot open file ({e.strerror or e})") from None
    try:
        try:
            im, failure = _identify(fp, p)
        except Exception as e:  # noqa: BLE001 - any plugin failure means "unreadable header"
            raise _fail(p, f"unreadable image header ({type(e).__name__}: {e})") from None
        if im is None and failure is not None:
            raise _fail(p, f"{failure}; the file is damaged or truncated")
        if im is None:
            fp.seek(0)
            head = fp.read(12)
            raise _fail(
                p,
                f"content is not a recognised image format (suffix {Path(p).suffix or 'none'!r}, "
                f"first bytes {head!r}); check the file or remove the row",
            )
        w, h = (int(v) for v in im.size)
        if w <= 0 or h <= 0:
            raise _fail(p, f"declares an empty size {w}x{h}")
        if w * h > max_pixels:
            raise _bomb_message(p, w, h, max_pixels)
        yield im, n_bytes
    finally:
        fp.close()


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make sure truncated data raises, without touching PIL's state unless someone changed it."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _TRUNCATED_LOCK:
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old


def _load(im: ImageFile.ImageFile, path: str) -> None:
    try:
        with _strict_truncation():
            im.load()
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - every decoder failure becomes one clear error
        msg = str(e) or type(e).__name__
        kind = "truncated image data" if "truncated" in msg.lower() else "corrupt image data"
        raise _fail(
            path, f"{kind} ({type(e).__name__}: {msg}); re-export the file or skip it with skip_bad=True"
        ) from None


def probe_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    level: Literal["header", "full"] = "header",
) -> ImageInfo:
    """Check that a file is a usable image and return what it declares.

    Args:
        path: image file.
        max_pixels: refuse images declaring more pixels than this.
        level: ``"header"`` reads only the header (catches missing, zero-byte, non-image and
            bomb-sized files); ``"full"`` also decodes every pixel (catches truncated data).

    Raises:
        ImageDecodeError: the file cannot be used; the message names the file and the reason.
    """
    p = os.fspath(path)
    with _opened(p, max_pixels=max_pixels) as (im, n_bytes):
        info = ImageInfo(format=str(im.format), mode=str(im.mode), size=(int(im.size[0]), int(im.size[1])),
                         n_bytes=n_bytes)
        if level == "full":
            _load(im, p)
    return info


def _round_u8(x: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)


def _composite_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 colour and ``(H, W)`` uint8 alpha -> colour over black, rounded half up."""
    c = rgb.astype(np.uint32) * alpha.astype(np.uint32)[..., None]  # (H, W, 3)
    return ((c + 127) // 255).astype(np.uint8)


def _scale_to_u8(arr: np.ndarray) -> np.ndarray:
    """Scale a numeric ``(H, W)`` array by its actual range ``[min(0, min), max]`` to uint8."""
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo = min(0.0, float(a[finite].min()))
    hi = float(a[finite].max())
    a = np.where(finite, a, lo)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return _round_u8((a - lo) * 255.0 / (hi - lo))


def _palette_rgba(im: Image.Image) -> np.ndarray:
    """The ``(256, 4)`` uint8 RGBA palette of a P/PA image, with tRNS/index transparency applied."""
    raw = im.getpalette("RGBA") or []
    pal = np.zeros((256, 4), dtype=np.uint8)
    pal[:, 3] = 255
    vals = np.asarray(raw, dtype=np.uint8).reshape(-1, 4)[:256]
    pal[: len(vals)] = vals
    t = im.info.get("transparency")
    if isinstance(t, (bytes, bytearray)):
        alpha = np.frombuffer(bytes(t), dtype=np.uint8)[:256]
        pal[: len(alpha), 3] = alpha
    elif isinstance(t, (int, np.integer)) and 0 <= int(t) < 256:
        pal[int(t), 3] = 0
    return pal


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded PIL image of any mode to RGB by the fixed rules in the module docstring."""
    mode = im.mode
    if mode == "RGB" and im.info.get("transparency") is None:
        return im.copy()
    if mode in ("P", "PA"):
        pal = _palette_rgba(im)
        idx = np.asarray(im.getchannel(0) if mode == "PA" else im, dtype=np.uint8)  # (H, W)
        rgba = pal[idx]  # (H, W, 4)
        alpha = rgba[..., 3]
        if mode == "PA":
            pa = np.asarray(im.getchannel("A"), dtype=np.uint8)
            alpha = ((alpha.astype(np.uint32) * pa + 127) // 255).astype(np.uint8)
        return Image.fromarray(_composite_black(rgba[..., :3], alpha))
    if mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)  # (H, W, 4), un-premultiplied
        return Image.fromarray(_composite_black(rgba[..., :3], rgba[..., 3]))
    if mode.startswith("I;16") or mode in ("I", "F"):
        if mode.startswith("I;16"):
            arr = np.asarray(im).astype(np.int64)
        else:
            arr = np.asarray(im)
        g = _scale_to_u8(arr)  # (H, W)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2))
    t = im.info.get("transparency")
    if mode in ("L", "RGB") and t is not None:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        arr = np.asarray(im)
        key = np.all(arr == np.asarray(t), axis=-1) if mode == "RGB" else arr == int(t)  # (H, W)
        rgb = rgb.copy()
        rgb[key] = 0
        return Image.fromarray(rgb)
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        err = ImageDecodeError(f"image mode {mode!r} cannot be converted to RGB ({e})")
        err.reason = str(err)  # type: ignore[attr-defined]
        raise err from None


def open_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file to an RGB PIL image, the same way every time.

    Args:
        path: image file (format detected from content, not suffix).
        max_pixels: refuse files declaring more pixels than this (checked on the header).

    Returns:
        A fully loaded ``RGB`` image with the EXIF orientation applied.

    Raises:
        ImageDecodeError: missing, zero-byte, non-image, truncated, corrupt or bomb-sized file;
            the message names the file and says what to do.

    Example:
        >>> img = open_image("photo.jpg")  # doctest: +SKIP
        >>> img.mode
        'RGB'
    """
    p = os.fspath(path)
    with _opened(p, max_pixels=max_pixels) as (im, _):
        _load(im, p)
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception as e:  # noqa: BLE001
            raise _fail(p, f"unreadable EXIF orientation ({type(e).__name__}: {e})") from None
        try:
            return to_rgb(oriented if oriented is not None else im)
        except ImageDecodeError as e:
            raise _fail(p, getattr(e, "reason", str(e))) from None


def _mask_array(im: Image.Image) -> np.ndarray:
    """``(H, W)`` bool: non-zero for single-band/label images, luminance > 127 otherwise."""
    mode = im.mode
    if mode in ("1", "L", "P", "I", "F") or mode.startswith("I;16"):
        arr = np.asarray(im)
        if arr.dtype == np.float32 or arr.dtype == np.float64:
            return np.isfinite(arr) & (arr != 0)
        return arr != 0
    gray = np.asarray(to_rgb(im).convert("L"), dtype=np.uint8)
    return gray > 127


def load_mask(
    path: str | os.PathLike[str],
    size: tuple[int, int] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Load a region mask as a boolean array.

    A pixel is inside the region when it is non-zero in a single-band image (modes 1, L, P
    label maps, I;16, I, F) or, for colour images, when its luminance after :func:`to_rgb` is
    above 127. The EXIF orientation is applied, as for images.

    Args:
        path: mask file.
        size: ``(H, W)`` to resize to (nearest neighbour), or ``None`` for the file's size.
        max_pixels: as for :func:`open_image`.

    Returns:
        ``(H, W)`` boolean array.

    Raises:
        ImageDecodeError: the mask file cannot be decoded.
    """
    p = os.fspath(path)
    with _opened(p, max_pixels=max_pixels) as (im, _):
        _load(im, p)
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception as e:  # noqa: BLE001
            raise _fail(p, f"unreadable EXIF orientation ({type(e).__name__}: {e})") from None
        m = _mask_array(oriented if oriented is not None else im)  # (H, W)
    if size is not None:
        h, w = (int(v) for v in size)
        if (h, w) != m.shape:
            resized = Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
            m = np.asarray(resized) > 127
    return np.ascontiguousarray(m, dtype=bool)


def image_sha256(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with builtins.open(os.fspath(path), "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


_FAMILY = {"MPO": "JPEG", "APNG": "PNG"}


def same_format_family(fmt: str, suffix: str) -> bool | None:
    """Whether ``suffix`` (e.g. ``".jpg"``) is a usual suffix for content format ``fmt``.

    Returns ``None`` when PIL registers no format for the suffix.
    """
    Image.init()
    expected = Image.registered_extensions().get(suffix.lower())
    if expected is None:
        return None
    return _FAMILY.get(expected, expected) == _FAMILY.get(fmt, fmt)
