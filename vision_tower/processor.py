"""Image preprocessing for the towers: `crop` (CLIP), `pad` (LLaVA-1.5) and `resize`, batched into a tensor.

Two resampling backends, both bicubic with antialiasing on uint8 pixels:
- `torch` (default): torch's uint8 antialiased bicubic kernel on a channels-last view of the decoded pixels
  (several times faster than PIL; PIL-compatible filter, results within 1-2 grey levels of PIL on <1% of values);
- `pil`: PIL's resampler, bit-identical to torchvision/EVA-CLIP transforms applied to PIL images.
The uint8 → normalised float step is one fused `addcmul` per image into a preallocated batch tensor.

Crop rounding follows torchvision / EVA-CLIP's eval transform (`Resize(S)` on the short side, then
`CenterCrop(S)` with offsets `int(round((H - S) / 2))`), the transform LLM2CLIP's numbers come from. HF's
CLIPImageProcessor uses `(H - S) // 2`, so with an odd margin the two crops differ by one pixel.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import IMAGE_ASPECT_RATIOS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .image_io import check_pil_format, load_image

BACKENDS = ("torch", "pil")
MAX_CANVAS_PIXELS = 64_000_000  # pad mode: larger square canvases are avoided by shrinking the image first
_BICUBIC = Image.Resampling.BICUBIC


class ImageProcessor:
    """`processor(images) -> FloatTensor[B, 3, S, S]`; images may be PIL images or anything `load_image` takes
    (RGB PIL images are used as they are: EXIF orientation is `load_image`'s job)."""

    def __init__(self, image_size: int = 336, image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
                 image_std: Sequence[float] = OPENAI_CLIP_STD, image_aspect_ratio: str = "crop",
                 backend: str = "torch"):
        if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, got {image_aspect_ratio!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError("image_mean and image_std need 3 entries each (std > 0)")
        self.image_size = image_size
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.image_aspect_ratio = image_aspect_ratio
        self.backend = backend
        # LLaVA-1.5's expand2square colour: tuple(int(x * 255) for x in image_mean) = (122, 116, 104) for CLIP.
        self.pad_color = tuple(int(m * 255) for m in self.image_mean)
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._neg_shift = -mean / std

    def with_image_aspect_ratio(self, image_aspect_ratio: str) -> "ImageProcessor":
        """The same processor with another geometry (`IMAGE_ASPECT_RATIOS`)."""
        return ImageProcessor(self.image_size, self.image_mean, self.image_std, image_aspect_ratio, self.backend)

    def __repr__(self) -> str:
        return (f"ImageProcessor(image_size={self.image_size}, image_aspect_ratio={self.image_aspect_ratio!r}, "
                f"backend={self.backend!r}, "
                f"image_mean={self.image_mean}, image_std={self.image_std})")

    # ------------------------------------------------------------------ geometry
    def prepare(self, image) -> torch.Tensor:
        """One image → uint8 tensor [3, S, S] (possibly a strided view) after the `image_aspect_ratio` geometry."""
        if isinstance(image, Image.Image) and image.mode == "RGB":
            check_pil_format(image)
            img = image
        else:
            img = load_image(image)
        s = self.image_size
        with warnings.catch_warnings():
            # np.asarray(PIL image) is read-only; tensors made from it are only ever read.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            if self.image_aspect_ratio == "crop":
                return self._resize_center_crop(img)
            if self.image_aspect_ratio == "pad":
                img = expand2square(_fit_canvas(img), self.pad_color)  # PIL paste: a C memcpy, ~1 ms at 640 px
            if self.backend == "torch":
                return self._resize(_chw(img), s, s)
            return _chw(img if img.size == (s, s) else img.resize((s, s), _BICUBIC))

    def prepare_image(self, image) -> Image.Image:
        """`prepare` as an RGB PIL image: what the tower will see, for display or for a worker to hand over."""
        return Image.fromarray(self.prepare(image).permute(1, 2, 0).contiguous().numpy(), "RGB")

    def _resize(self, chw: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if tuple(chw.shape[1:]) == (height, width):
            return chw
        return F.interpolate(chw[None], size=(height, width), mode="bicubic", antialias=True)[0]

    def _resize_center_crop(self, img: Image.Image) -> torch.Tensor:
        s = self.image_size
        w, h = img.size
        new_w, new_h = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        top, left = int(round((new_h - s) / 2.0)), int(round((new_w - s) / 2.0))
        if new_w * new_h > 4 * s * s:
            # Extreme aspect ratio: resample only the kept window (PIL's box resize; equal to resize-then-crop
            # up to +-1 grey level on a few pixels) instead of materialising a huge intermediate image.
            sx, sy = w / new_w, h / new_h
            return _chw(img.resize((s, s), _BICUBIC, box=(left * sx, top * sy, (left + s) * sx, (top + s) * sy)))
        if self.backend == "torch":
            resized = self._resize(_chw(img), new_h, new_w)
        else:
            resized = _chw(img if (new_w, new_h) == (w, h) else img.resize((new_w, new_h), _BICUBIC))
        return resized[:, top:top + s, left:left + s]

    # ------------------------------------------------------------------ batching
    def __call__(self, images) -> torch.Tensor:
        if isinstance(images, (Image.Image, str, bytes)) or not isinstance(images, Iterable):
            images = [images]
        pixels = [self.prepare(im) for im in images]
        if not pixels:
            raise ValueError("ImageProcessor got no images")
        return self.normalize(pixels)

    def normalize(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 [3, S, S] tensors → normalised float32 [B, 3, S, S] ((x / 255 - mean) / std, fused per image)."""
        s = self.image_size
        out = torch.empty(len(pixels), 3, s, s, dtype=torch.float32)
        for i, px in enumerate(pixels):
            if tuple(px.shape) != (3, s, s) or px.dtype != torch.uint8:
                raise ValueError(f"expected a uint8 tensor [3, {s}, {s}], got {px.dtype} {tuple(px.shape)}")
            torch.addcmul(self._neg_shift, px.float(), self._scale, out=out[i])
        return out


def _chw(img: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8 view (channels-last strides) of an RGB image's pixels: one copy out of PIL, no more."""
    return torch.from_numpy(np.asarray(img)).permute(2, 0, 1)


def _fit_canvas(img: Image.Image, max_canvas: int = MAX_CANVAS_PIXELS) -> Image.Image:
    """Shrink pathological aspect ratios (1 x 100000) first so the square canvas stays bounded."""
    side = max(img.size)
    if side * side <= max_canvas:
        return img
    f = (max_canvas ** 0.5) / side
    return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), _BICUBIC)


def expand2square(img: Image.Image, color) -> Image.Image:
    """LLaVA's `expand2square`: centre the image on a square canvas of `color` (odd margins go bottom/right)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), tuple(color))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas
