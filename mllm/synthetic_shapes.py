"""Synthetic shapes scenes: flat-coloured shapes on a plain background, each in its own cell, drawn exactly.

The one drawing of the synthetic domain, shared by the quickstart's datasets (`mllm.quickstart`) and the demo's
example images (`demo.examples`), so the demo shows pictures of the kind the quickstart checkpoint learned.
Drawing is deterministic given the `random.Random` passed in.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
    "cyan": (30, 190, 200),
    "gray": (120, 120, 120),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = {"large": 0.9, "small": 0.55}  # object diameter as a fraction of its cell's shorter side
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5 academic VQA suffix
IMAGE_SIZE = 64  # the quickstart's image side in pixels
BACKGROUND = (255, 255, 255)
SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges, still integer-exact


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    cell: int  # index into the layout's cells (row-major)


@dataclass
class Scene:
    objects: list[SceneObject]
    rows: int  # 1 (left/right halves) or 2 (quadrants)

    def side(self, obj: SceneObject) -> str:
        return "left" if obj.cell % 2 == 0 else "right"

    def where(self, obj: SceneObject) -> str:
        if self.rows == 1:
            return f"on the {self.side(obj)}"
        return f"at the {'top' if obj.cell < 2 else 'bottom'} {self.side(obj)}"

    def caption(self) -> str:
        parts = [f"a {o.size} {o.color} {o.shape} {self.where(o)}" for o in sorted(self.objects, key=lambda o: o.cell)]
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return text[0].upper() + text[1:] + "."


def render_scene(scene: Scene, rng: random.Random, image_size: int = IMAGE_SIZE,
                 background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Draw the scene; each object is jittered inside its cell without touching the cell's border."""
    s = image_size * SUPERSAMPLE
    img = Image.new("RGB", (s, s), tuple(background))
    draw = ImageDraw.Draw(img)
    cell_w, cell_h = s / 2, s / scene.rows
    for obj in scene.objects:
        d = SIZES[obj.size] * min(cell_w, cell_h)
        x0, y0 = (obj.cell % 2) * cell_w, (obj.cell // 2) * cell_h
        slack_x, slack_y = cell_w - d, cell_h - d
        cx = x0 + d / 2 + slack_x * (0.1 + 0.8 * rng.random())
        cy = y0 + d / 2 + slack_y * (0.1 + 0.8 * rng.random())
        _draw_shape(draw, obj.shape, cx, cy, d / 2, PALETTE[obj.color])
    return img.reduce(SUPERSAMPLE)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.85  # a square of the same visual weight as the circle
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(pts, fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "cross":
        t = r * 0.35
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
