"""Images a person hands to the chat (a path typed in the terminal, an upload in the demo): decoded through
`vision_tower.load_image`, identified by content, and explained in plain words when they cannot be used."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from vision_tower import ImageLoadError, load_image
from vision_tower.image_io import DEFAULT_MAX_PIXELS

from ..errors import UserError


class UnusableImageError(UserError):
    """An image given on the command line that cannot be used (the reason in plain words)."""


def check_image(path: str | os.PathLike) -> None:
    """Decode `path` once before a model loads, so a bad image costs a second, not a model load."""
    try:
        load_image(path)
    except ImageLoadError as exc:
        raise UnusableImageError(explain(exc, str(path))) from exc


def content_key(source: str | os.PathLike | bytes) -> str:
    """SHA-1 of the file's bytes: the same picture uploaded twice is the same image."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha1(source).hexdigest()
    digest = hashlib.sha1()
    with open(source, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(RGB PIL image, content key) of a file path or its bytes; raises `ImageLoadError` (see `explain`).
    Images over `max_pixels` are refused before they are decoded."""
    return load_image(source, max_pixels=max_pixels), content_key(source)


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """A copy whose longer side is at most `max_side` (antialiased bicubic; smaller images are returned as
    they are): what a chat shows, or saves, in place of a large original."""
    width, height = image.size
    scale = max_side / max(width, height)
    if scale >= 1.0:
        return image
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BICUBIC)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def explain(error: ImageLoadError, name: str | None = None) -> str:
    """One sentence per failure reason, naming the file (by `name`, e.g. the uploaded file's own name)."""
    name = name or Path(error.path).name or error.path
    detail = f" ({error.detail})" if error.detail else ""
    if error.reason == "missing":
        return f"Cannot use {name}: the file does not exist{detail}."
    if error.reason == "empty":
        return f"Cannot use {name}: the file is empty (0 bytes)."
    if error.reason == "not_image":
        return (f"Cannot use {name}: it is not an image{detail}. "
                "Use a common image format such as PNG, JPEG, WebP, GIF, BMP or TIFF.")
    if error.reason == "unsupported_format":
        return f"Cannot use {name}: {error.detail}."
    if error.reason == "too_large":
        return f"Cannot use {name}: the image is too large{detail}. Scale it down and try again."
    return f"Cannot use {name}: the image could not be decoded, the file looks corrupt or truncated{detail}."


__all__ = ["ImageLoadError", "UnusableImageError", "check_image", "content_key", "explain", "open_image", "png_bytes",
           "shrink"]
