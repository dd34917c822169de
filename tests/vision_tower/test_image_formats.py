"""The image-format allow-list: PNG, JPEG, WEBP, GIF, BMP and TIFF are decoded, told from the bytes; every
other format is refused as `unsupported_format` before its parser or decoder runs."""
import io
import struct

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from vision_tower import ImageLoadError, ImageProcessor, load_image
from vision_tower.image_io import ALLOWED_FORMATS

# 58 bytes: what the audit uploaded. Pillow's EPS plugin would hand this to Ghostscript on load().
EPS_58 = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
SMALL = Image.fromarray(np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3), "RGB")


def _encoded(fmt: str, image=SMALL) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _psd_header() -> bytes:  # Pillow cannot write PSD; a valid 26-byte header plus empty sections
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 5, 7, 8, 3) + b"\0" * 4 * 3 + b"\0\0"


EXOTIC = {  # format -> (file name, bytes); the name's extension is a lie where that shows the bytes decide
    "EPS": ("upload.png", EPS_58),
    "PSD": ("layers.psd", _psd_header()),
    "ICO": ("favicon.ico", _encoded("ICO")),
    "PCX": ("old.jpg", _encoded("PCX")),
    "SGI": ("pic.sgi", _encoded("SGI")),
    "PPM": ("pic.ppm", _encoded("PPM")),
    "QOI": ("pic.qoi", _encoded("QOI")),
    "DDS": ("tex.dds", _encoded("DDS")),
    "JPEG2000": ("pic.jp2", _encoded("JPEG2000")),
    "TGA": ("pic.tga", _encoded("TGA")),  # no magic bytes: named by its extension, still never parsed
}


@pytest.fixture
def no_foreign_plugin_runs(monkeypatch):
    """Every plugin outside the allow-list (and Ghostscript) fails the test if it is ever called."""
    Image.init()
    called = []

    def forbidden(fmt):
        def factory(*args, **kwargs):
            called.append(fmt)
            raise AssertionError(f"the {fmt} parser ran")
        return factory

    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt not in (*ALLOWED_FORMATS, "MPO"):
            monkeypatch.setitem(Image.OPEN, fmt, (forbidden(fmt), accept))

    def ghostscript(*args, **kwargs):
        called.append("Ghostscript")
        raise AssertionError("Ghostscript ran")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    return called


@pytest.mark.parametrize("fmt", sorted(EXOTIC))
def test_exotic_formats_are_refused_before_their_parser(fmt, tmp_path, no_foreign_plugin_runs):
    name, data = EXOTIC[fmt]
    path = tmp_path / name
    path.write_bytes(data)
    for source in (path, str(path), open(path, "rb")):
        with pytest.raises(ImageLoadError) as info:
            load_image(source)
        assert info.value.reason == "unsupported_format"
        assert fmt in info.value.detail and "PNG, JPEG, WEBP, GIF, BMP or TIFF" in info.value.detail
    with pytest.raises(ImageLoadError) as info:
        load_image(data)  # bytes alone: no name, no extension
    # TGA has no magic bytes: without its name it is refused as whatever its header resembles, or not an image
    assert info.value.reason in (("unsupported_format", "not_image") if fmt == "TGA" else ("unsupported_format",))
    assert no_foreign_plugin_runs == []


def test_the_58_byte_eps_never_reaches_ghostscript(tmp_path, no_foreign_plugin_runs):
    assert len(EPS_58) == 58
    for name in ("a.eps", "a.png", "a.jpg"):
        (tmp_path / name).write_bytes(EPS_58)
        with pytest.raises(ImageLoadError, match="EPS") as info:
            load_image(tmp_path / name)
        assert info.value.reason == "unsupported_format"
    with pytest.raises(ImageLoadError):
        ImageProcessor(14)([EPS_58])
    assert no_foreign_plugin_runs == []


@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
def test_allowed_formats_open_whatever_their_name(fmt, tmp_path, no_foreign_plugin_runs):
    data = _encoded(fmt)
    path = tmp_path / "named_like_a.eps"
    path.write_bytes(data)
    for source in (path, data):
        img = load_image(source)
        assert img.mode == "RGB" and img.size == (7, 5)
        if fmt in ("PNG", "BMP", "TIFF", "WEBP"):  # lossless here (WEBP's default is lossy: skip exactness)
            if fmt != "WEBP":
                assert np.array_equal(np.asarray(img), np.asarray(SMALL))
    assert no_foreign_plugin_runs == []


def test_a_lazily_opened_foreign_pil_image_is_refused_before_it_decodes(tmp_path, monkeypatch):
    path = tmp_path / "x.eps"
    path.write_bytes(EPS_58)
    lazy = Image.open(path)  # the caller's own open: header parsed, nothing decoded yet
    assert lazy.format == "EPS" and lazy.mode == "RGB"

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript ran")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    for call in (load_image, lambda im: ImageProcessor(14)([im])):
        with pytest.raises(ImageLoadError) as info:
            call(lazy)
        assert info.value.reason == "unsupported_format"
    in_memory = Image.new("RGB", (3, 3), (1, 2, 3))  # format None: made in memory, always fine
    assert load_image(in_memory).size == (3, 3) and ImageProcessor(14)([in_memory]).shape == (1, 3, 14, 14)
    decoded_png = Image.open(io.BytesIO(_encoded("PNG")))
    assert load_image(decoded_png).size == (7, 5)


def test_text_is_still_not_an_image(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path / "notes.txt")
    assert info.value.reason == "not_image" and "PNG, JPEG" in info.value.detail
