"""What a chat keeps of an image: the tower's exact view per preprocessing mode (not the large original), a
small display copy, and a refusal before decoding for images over the pixel cap."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mllm.chat.api import IMAGE_ASPECT_RATIOS
from mllm.chat.images import ImageLoadError, open_image, shrink


def _photo(width, height):
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("size", [(640, 360), (300, 900), (57, 57)])
def test_prepared_views_give_the_tower_exactly_the_pixels_of_the_original(bot, size):
    original = _photo(*size)
    views = bot.prepared_views(original)
    side = bot.processor.image_processor.image_size
    assert set(views) == set(IMAGE_ASPECT_RATIOS) and all(v.size == (side, side) for v in views.values())
    for mode, view in views.items():
        processor = bot.processor_for(mode).image_processor
        assert processor.prepare(view).equal(processor.prepare(original)), mode  # bit-exact in every mode


def test_shrink_bounds_the_long_side_and_leaves_small_images_alone():
    small = _photo(80, 60)
    assert shrink(small, 512) is small
    assert shrink(_photo(4000, 1000), 512).size == (512, 128)


def test_open_image_refuses_over_the_cap_before_decoding_and_keys_by_content(tmp_path):
    _photo(120, 80).save(tmp_path / "a.png")
    image, key = open_image(tmp_path / "a.png")
    assert image.size == (120, 80) and open_image((tmp_path / "a.png").read_bytes())[1] == key
    Image.new("1", (5000, 5000)).save(tmp_path / "bomb.png")  # a few kB that decode to 25 MP
    with pytest.raises(ImageLoadError) as err:
        open_image(tmp_path / "bomb.png", max_pixels=1_000_000)
    assert err.value.reason == "too_large" and "5000x5000" in err.value.detail
