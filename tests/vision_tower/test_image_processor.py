"""ImageProcessor modes against torchvision / straightforward re-implementations, on odd images."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vision_tower import ImageProcessor, load_image
from vision_tower.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

S = 336
EVA_CLIP_EVAL = T.Compose([  # eva_clip/transform.py image_transform(336, is_train=False)
    T.Resize(S, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(S), T.ToTensor(),
    T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
])


def _img(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _expand2square(img, color):  # LLaVA llava/mm_utils.py semantics
    w, h = img.size
    if w == h:
        return img
    if w > h:
        out = Image.new(img.mode, (w, w), color)
        out.paste(img, (0, (w - h) // 2))
    else:
        out = Image.new(img.mode, (h, h), color)
        out.paste(img, ((h - w) // 2, 0))
    return out


def _assert_matches(ours, want, backend):
    """pil: bit-identical to torchvision on PIL; torch: within 2 grey levels, on under 1% of the values."""
    if backend == "pil":
        assert torch.allclose(ours, want, atol=1e-5)
        return
    levels = ((ours - want).abs() * torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1) * 255).round()
    assert levels.max() <= 2 and (levels > 0).float().mean() < 0.01


SIZES = [(640, 480), (1024, 683), (683, 1024), (337, 336), (336, 336), (500, 333), (100, 80), (1, 1), (7, 3)]


@pytest.mark.parametrize("backend", ["pil", "torch"])
@pytest.mark.parametrize("size", SIZES)
def test_crop_equals_eva_clip_eval_transform(size, backend):
    img = _img(*size)
    ours = ImageProcessor(S, image_aspect_ratio="crop", backend=backend)(img)
    assert ours.shape == (1, 3, S, S) and ours.dtype == torch.float32
    _assert_matches(ours[0], EVA_CLIP_EVAL(img), backend)


def test_crop_odd_margin_uses_torchvision_rounding():
    """1024x683 -> 503x336, margin 167: torchvision/EVA-CLIP crop at left 84 (HF's CLIPImageProcessor: 83)."""
    img = _img(1024, 683)
    resized = np.asarray(img.resize((503, 336), Image.Resampling.BICUBIC))
    arr = ImageProcessor(S, image_aspect_ratio="crop", backend="pil").prepare(img).permute(1, 2, 0).numpy()
    assert np.array_equal(arr, resized[:, 84:84 + S])
    assert not np.array_equal(arr, resized[:, 83:83 + S])


@pytest.mark.parametrize("size", [(1, 500), (3000, 2)])
def test_crop_extreme_aspect_ratio_without_huge_intermediate(size):
    img = _img(*size)
    ours = ImageProcessor(S, image_aspect_ratio="crop")(img)[0]
    diff = (ours - EVA_CLIP_EVAL(img)).abs() * torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1) * 255
    assert diff.max() <= 1.01  # at most one grey level, from PIL's windowed resample


@pytest.mark.parametrize("backend", ["pil", "torch"])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (641, 480), (1, 1), (1, 9), (336, 336), (50, 20)])
def test_pad_equals_llava_expand2square_then_clip_processor(size, backend):
    img = _img(*size, seed=1)
    proc = ImageProcessor(S, image_aspect_ratio="pad", backend=backend)
    assert proc.pad_color == (122, 116, 104)
    want = EVA_CLIP_EVAL(_expand2square(img, (122, 116, 104)))
    _assert_matches(proc(img)[0], want, backend)


def test_pad_border_has_the_mean_colour():
    out = ImageProcessor(S, image_aspect_ratio="pad")(_img(640, 320))[0]  # 160-row bands above and below, 84 after resizing
    expected = (torch.tensor([122, 116, 104]) / 255 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    assert torch.allclose(out[:, :40].mean(dim=(1, 2)), expected, atol=1e-5)
    assert out[:, :40].std(dim=(1, 2)).max() < 1e-5


@pytest.mark.parametrize("backend", ["pil", "torch"])
def test_resize_mode_and_batching(tmp_path, backend):
    imgs = [_img(640, 480), _img(30, 90, seed=2), _img(336, 336, seed=3)]
    path = tmp_path / "x.png"
    imgs[1].save(path)
    proc = ImageProcessor(S, image_aspect_ratio="resize", backend=backend)
    batch = proc([imgs[0], path, imgs[2]])
    assert batch.shape == (3, 3, S, S)
    want = T.Compose([T.Resize((S, S), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                      T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    for got, img in zip(batch, imgs):
        _assert_matches(got, want(img), backend)
    assert torch.equal(proc(path)[0], batch[1])


def test_non_rgb_inputs_go_through_load_image():
    rgba = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    out = ImageProcessor(S, image_aspect_ratio="crop")(rgba)
    white = (1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    assert torch.allclose(out[0, :, 0, 0], white, atol=1e-5)
    assert torch.equal(ImageProcessor(S)(Image.new("L", (5, 5), 7)), ImageProcessor(S)(load_image(Image.new("L", (5, 5), 7))))


def test_other_sizes_and_stats_and_errors():
    proc = ImageProcessor(224, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), image_aspect_ratio="crop")
    out = proc(Image.new("RGB", (300, 250), (255, 0, 128)))
    assert out.shape == (1, 3, 224, 224)
    assert torch.allclose(out[0, :, 100, 100], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]), atol=1e-6)
    padded = proc.with_image_aspect_ratio("pad")
    assert padded.image_aspect_ratio == "pad" and padded.image_size == 224
    assert ImageProcessor(S, backend="pil").with_image_aspect_ratio("pad").backend == "pil"
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        ImageProcessor(S, image_aspect_ratio="square")
    with pytest.raises(ValueError, match="backend"):
        ImageProcessor(S, backend="cv2")
    with pytest.raises(ValueError, match="no images"):
        proc([])
