"""load_image: every PIL mode to RGB, EXIF orientation, odd sizes, and each failure reason."""
import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vision_tower import ImageLoadError, load_image


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_jpeg_from_path_bytes_and_file(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = _save(Image.fromarray(arr), tmp_path / "a.png")
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 30) and np.array_equal(np.asarray(img), arr)
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), arr)
    with open(path, "rb") as fh:
        assert np.array_equal(np.asarray(load_image(fh)), arr)
    assert load_image(str(path)).size == (40, 30)


def test_alpha_modes_are_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = np.asarray(load_image(_save(rgba, tmp_path / "a.png")))
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[3, 3]) == (255, 255, 255)
    la = Image.new("LA", (2, 2), (10, 0))
    assert tuple(np.asarray(load_image(_save(la, tmp_path / "la.png")))[0, 0]) == (255, 255, 255)
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    pal.info["transparency"] = 0
    assert tuple(np.asarray(load_image(_save(pal, tmp_path / "p.png", transparency=0)))[1, 1]) == (255, 255, 255)
    black = load_image(rgba, background=(0, 0, 0))
    assert tuple(np.asarray(black)[3, 3]) == (0, 0, 0)


@pytest.mark.parametrize("mode,value,expected", [
    ("L", 77, 77), ("1", 1, 255), ("I;16", 65535, 255), ("I;16", 257 * 100, 100), ("I", 257 * 40, 40),
    ("I", 200, 200), ("F", 0.5, 128), ("F", 300.0, 255),
])
def test_gray_and_high_bit_depth(mode, value, expected):
    img = Image.new(mode, (3, 2), value)
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (3, 2)
    assert tuple(np.asarray(out)[1, 2]) == (expected,) * 3


def test_sixteen_bit_png_round_trip(tmp_path):
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "g16.png")
    out = np.asarray(load_image(path))[..., 0]
    assert out.tolist() == [[0, 255], [128, 1]]


def test_cmyk_palette_and_ycbcr(tmp_path):
    cmyk = Image.new("CMYK", (5, 5), (0, 255, 255, 0))  # pure red in naive CMYK
    assert tuple(np.asarray(load_image(_save(cmyk, tmp_path / "c.jpg", quality=100)))[2, 2]) == pytest.approx(
        (255, 0, 0), abs=3)
    pal = Image.new("RGB", (4, 4), (0, 128, 255)).convert("P")
    assert load_image(pal).mode == "RGB"
    assert load_image(Image.new("YCbCr", (2, 2), (128, 128, 128))).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(img, tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    arr = np.asarray(out).mean(axis=2)
    assert arr[:10].mean() > 200 and arr[-10:].mean() < 50  # the left strip is now on top


def test_one_pixel_image(tmp_path):
    out = load_image(_save(Image.new("RGB", (1, 1), (9, 8, 7)), tmp_path / "one.png"))
    assert out.size == (1, 1) and tuple(np.asarray(out)[0, 0]) == (9, 8, 7)


def _png_header_claiming(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def test_failure_reasons(tmp_path):
    cases = {"missing": tmp_path / "nope.jpg", "empty": tmp_path / "empty.jpg", "not_image": tmp_path / "t.jpg",
             "corrupt": tmp_path / "trunc.jpg", "too_large": tmp_path / "bomb.png"}
    cases["empty"].write_bytes(b"")
    cases["not_image"].write_text("hello, I am text")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    cases["corrupt"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    cases["too_large"].write_bytes(_png_header_claiming(100_000, 100_000))
    for reason, path in cases.items():
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert info.value.reason == reason and info.value.path == str(path)
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path)
    assert info.value.reason == "not_image"
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


def test_bomb_guard_threshold_is_configurable(tmp_path):
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "x.png")
    with pytest.raises(ImageLoadError) as info:
        load_image(path, max_pixels=9_999)
    assert info.value.reason == "too_large"
    assert load_image(path, max_pixels=10_000).size == (100, 100)


def test_error_is_picklable_for_dataloader_workers():
    err = pickle.loads(pickle.dumps(ImageLoadError("corrupt", "/x.jpg", "truncated")))
    assert (err.reason, err.path, err.detail) == ("corrupt", "/x.jpg", "truncated")
    with pytest.raises(ValueError):
        ImageLoadError("weird", "/x")
    with pytest.raises(TypeError):
        load_image(12345)


def test_high_bit_depth_gray_equals_the_rounded_rescale():
    """Every 16-bit value (and 32-bit ints outside 0..65535) maps as rint(x / 257) clipped to 0..255."""
    from vision_tower.image_io import _gray_to_uint8

    every = np.arange(65536, dtype=np.uint16)
    expected = np.clip(np.rint(every.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    assert np.array_equal(_gray_to_uint8(every, sixteen_bit=True), expected)
    wide = np.array([-5, 0, 255, 256, 257 * 40, 65535, 70000, 2**31 - 1], dtype=np.int32)
    expected = np.clip(np.rint(wide.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    assert np.array_equal(_gray_to_uint8(wide, sixteen_bit=False), expected)
    small = np.array([-3, 0, 17, 255], dtype=np.int32)  # 8-bit data in a 32-bit image: clipped, not rescaled
    assert _gray_to_uint8(small, sixteen_bit=False).tolist() == [0, 0, 17, 255]
