"""Shared fixtures: a real Llama SentencePiece tokenizer, record files, and good and broken image files."""
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import mistral_common
import numpy as np
import pytest
import transformers
from PIL import Image

from mllm.tokenization import add_image_token


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokenizer")
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", d / "tokenizer.model")
    return d


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    tok = transformers.LlamaTokenizer.from_pretrained(tokenizer_dir)
    add_image_token(tok)
    return tok


def _write_records(path: Path, records, fmt: str = "json") -> Path:
    if fmt == "json":
        path.write_text(json.dumps(records, ensure_ascii=False))
    else:
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    return path


@pytest.fixture(scope="session")
def write_records():
    """Write records as a JSON list (``fmt="json"``) or JSONL (strings are written as raw lines)."""
    return _write_records


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): what a decompression bomb looks like up front."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    """Good images in several modes and sizes, and one file per bad-image class."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "RGB")
    rgb.save(d / "rgb.jpg", quality=90)
    rgb.save(d / "rgb.png")
    rgb.convert("L").save(d / "gray.png")
    rgb.convert("P").save(d / "palette.png")
    rgb.convert("RGBA").save(d / "rgba.png")
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    rgb.convert("1").save(d / "bilevel.png")
    Image.fromarray((rng.integers(0, 65535, (20, 30))).astype(np.uint16)).save(d / "gray16.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "one_pixel.png")
    Image.new("RGB", (300, 7), (0, 128, 255)).save(d / "thin.png")
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(jpeg, "JPEG", quality=90)
    (d / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    (d / "not_image.jpg").write_text("this is a text file, not a JPEG\n")
    (d / "zero.jpg").write_bytes(b"")
    (d / "bomb.png").write_bytes(png_header_only(30_000, 30_000))
    # an EPS named like a JPEG: the allow-list decides by the bytes, and Ghostscript is never reached
    (d / "vector.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    return d
