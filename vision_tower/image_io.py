"""Robust image loading: any PIL mode to RGB, EXIF orientation applied, bad files reported by reason.

The data pipeline counts skipped samples by `ImageLoadError.reason`, so every failure maps to one of
`missing`, `empty`, `not_image`, `unsupported_format`, `corrupt`, `too_large` instead of surfacing as a
PIL/OSError deep inside.

Only the formats in `ALLOWED_FORMATS` are ever parsed or decoded, whatever the file is called: the format is
told from the bytes (`Image.open(..., formats=ALLOWED_FORMATS)` tries only those plugins), so an EPS file
never reaches Ghostscript and PSD/ICO/PCX/SGI/TGA/... never reach their parsers. Such files are refused
with reason `unsupported_format` (named by their magic bytes, or by their extension when the format has no
magic bytes), other bytes with `not_image`.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

REASONS = ("missing", "empty", "not_image", "unsupported_format", "corrupt", "too_large")
# The formats photos and datasets come in; every decode in the project goes through this list.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_ALLOWED_RESULTS = (*ALLOWED_FORMATS, "MPO")  # PIL names multi-picture JPEGs (phone photos) MPO: JPEG's plugin
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; PIL's own bomb limit (~89 MP warn, 2x that error) is looser
WHITE = (255, 255, 255)
_ORIENTATION = 0x0112
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image]


class ImageLoadError(Exception):
    """An image that cannot be used; `.reason` is one of `REASONS`, `.path` names the source."""

    def __init__(self, reason: str, path: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown ImageLoadError reason {reason!r}")
        self.reason, self.path, self.detail = reason, str(path), detail
        super().__init__(f"{reason}: {path}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.reason, self.path, self.detail))


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, background=WHITE) -> Image.Image:
    """Decode `source` (path, bytes, binary file or PIL image) into a fully loaded RGB image.

    EXIF orientation is applied; transparency is composited onto `background` (white by default); 16-bit and
    float grayscale are rescaled to 8 bit rather than clipped. Images over `max_pixels` are refused before
    decoding (decompression-bomb guard).
    """
    if isinstance(source, Image.Image):
        check_pil_format(source)
        return to_rgb(_apply_exif(source), "<PIL.Image>", background)
    fp, name = _open_source(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_large", name, str(exc)) from exc
    except UnidentifiedImageError as exc:
        other = _identify_other_format(fp, name)
        if other is not None:
            raise ImageLoadError("unsupported_format", name, _unsupported(*other)) from exc
        raise ImageLoadError("not_image", name, f"not a {_ALLOWED_TEXT} image") from exc
    except Exception as exc:
        raise ImageLoadError("corrupt", name, f"{type(exc).__name__}: {exc}") from exc
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageLoadError("too_large", name, f"{width}x{height} = {width * height} pixels > {max_pixels}")
        if width <= 0 or height <= 0:
            raise ImageLoadError("corrupt", name, f"degenerate size {width}x{height}")
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageLoadError("too_large", name, str(exc)) from exc
        except Exception as exc:  # truncated data, bad chunks, decoder errors
            reason = "too_large" if "too large" in str(exc).lower() else "corrupt"
            raise ImageLoadError(reason, name, f"{type(exc).__name__}: {exc}") from exc
        return to_rgb(_apply_exif(img), name, background)
    finally:
        if isinstance(source, (str, os.PathLike)):
            fp.close()


_ALLOWED_TEXT = ", ".join(ALLOWED_FORMATS[:-1]) + " or " + ALLOWED_FORMATS[-1]


def _unsupported(fmt: str, how: str = "") -> str:
    return f"format {fmt}{f' ({how})' if how else ''} is not accepted; use {_ALLOWED_TEXT}"


def _identify_other_format(fp: IO[bytes], name: str) -> tuple[str, str] | None:
    """The image format outside the allow-list that these bytes are, for the error message only.

    Only the plugins' magic-byte checks run (never a parser or decoder); formats without magic bytes (TGA, ...)
    are named by the file's extension. The extension never decides what gets decoded, only what we call it.
    """
    Image.init()  # registers every plugin's magic check; importing a plugin decodes nothing
    ext = os.path.splitext(name)[1].lower()
    by_ext = Image.registered_extensions().get(ext)
    if by_ext in _ALLOWED_RESULTS:
        by_ext = None
    if by_ext is not None and Image.OPEN.get(by_ext, (None, None))[1] is None:
        return by_ext, f"by its extension {ext}"  # no magic bytes to check (TGA, ...): the name is all we have
    fp.seek(0)
    prefix = fp.read(16)
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt in _ALLOWED_RESULTS or accept is None:
            continue
        try:
            verdict = accept(prefix)
        except Exception:
            continue
        if verdict and not isinstance(verdict, str):  # a str is PIL's "recognised but unavailable" note
            return fmt, "by its first bytes"
    return (by_ext, f"by its extension {ext}") if by_ext is not None else None


def check_pil_format(img: Image.Image, name: str = "<PIL.Image>") -> None:
    """Refuse a PIL image opened from a format outside the list: a lazily opened one decodes on first use.
    Images made in memory (format None) pass."""
    if img.format is not None and img.format not in _ALLOWED_RESULTS:
        raise ImageLoadError("unsupported_format", name, _unsupported(img.format))


def _open_source(source) -> tuple[IO[bytes], str]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageLoadError("missing", path, "no such file")
        if os.path.isdir(path):
            raise ImageLoadError("not_image", path, "is a directory")
        if os.path.getsize(path) == 0:
            raise ImageLoadError("empty", path, "0 bytes")
        try:
            return open(path, "rb"), path
        except OSError as exc:
            raise ImageLoadError("missing", path, f"cannot open: {exc}") from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError("empty", "<bytes>", "0 bytes")
        return io.BytesIO(bytes(source)), "<bytes>"
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<file>"))
        data = source.read()
        if not data:
            raise ImageLoadError("empty", name, "0 bytes")
        return io.BytesIO(data), name
    raise TypeError(f"load_image needs a path, bytes, a binary file or a PIL image, got {type(source).__name__}")


def _apply_exif(img: Image.Image) -> Image.Image:
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # malformed EXIF must not cost the image
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            return ImageOps.exif_transpose(img)
        except Exception:
            return img
    return img


def to_rgb(img: Image.Image, name: str = "<image>", background=WHITE) -> Image.Image:
    """Any PIL mode → RGB. Alpha is composited over `background`; high-bit-depth gray is rescaled."""
    mode = img.mode
    try:
        if mode == "RGB":
            return img
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return Image.fromarray(_gray_to_uint8(np.asarray(img), sixteen_bit=mode.startswith("I;16")), "L").convert("RGB")
        has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
        if has_alpha:
            rgba = img.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, tuple(background))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        return img.convert("RGB")
    except Exception as exc:
        raise ImageLoadError("corrupt", name, f"cannot convert mode {mode} to RGB: {exc}") from exc


def _gray_to_uint8(arr: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """High-bit-depth gray to 8 bit: 16-bit data (or 32-bit ints above 255) scaled by 1/257, float in [0, 1]
    by 255, anything else clipped."""
    if arr.dtype.kind == "f":
        finite = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and 0.0 <= finite.min() and finite.max() <= 1.0 else 1.0
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    scaled = sixteen_bit or bool(arr.size and arr.max() > 255)
    # integer arithmetic in uint32 (4 bytes a pixel, not int64 + float64 copies of a large image):
    # (x + 128) // 257 == rint(x / 257) for integers, since x / 257 is never exactly halfway
    arr = np.clip(arr, 0, 65535 if scaled else 255).astype(np.uint32, copy=False)
    return ((arr + 128) // 257 if scaled else arr).astype(np.uint8)
