"""A synthetic task where fine spatial detail matters: small objects on a grid of cells, asked about by position.

Each scene is a `grid`×`grid` board (4×4 by default, one cell per 16-px patch at the quickstart's 64 px with patch
16) with 2-5 small coloured squares in distinct cells. Questions:

- ``color_at``: "What color is the object in row 2, column 3?" (the colour of one occupied cell);
- ``count``: "How many objects are there?".

Answers are balanced per category (a shuffled schedule of target colours and counts), so ignoring the image
scores at chance. A pixel-shuffle projector merging 2×2 patches puts four cells into one LLM token, so this task
measures what that merge costs where it should hurt most. The files, splits and the blank control are those of
`synthetic.generate` (which writes any task config); the caption lists every object by position, in reading order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from ..synthetic_shapes import PALETTE, SUPERSAMPLE
from .synthetic import Question, _schedule

CATEGORIES = ("color_at", "count")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


@dataclass(frozen=True)
class SpatialConfig:
    """Knobs of the spatial task; the defaults are the `spatial` quickstart profile's setting."""

    seed: int = 0
    image_size: int = 64
    grid: int = 4  # cells per side
    min_objects: int = 2
    max_objects: int = 5
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    object_size: float = 0.6  # square side as a fraction of the cell (jittered inside it)
    categories: tuple[str, ...] = CATEGORIES
    color_questions: int = 2  # colour-at-position questions per training image (distinct occupied cells)
    num_pretrain: int = 2000
    num_train: int = 2000
    num_heldout: int = 200
    background: tuple[int, int, int] = (255, 255, 255)
    blank_color: tuple[int, int, int] | None = None

    def validate(self) -> None:
        if not 2 <= self.grid <= len(ORDINALS):
            raise ValueError(f"grid must be in [2, {len(ORDINALS)}], got {self.grid}")
        if self.image_size < 4 * self.grid:
            raise ValueError(f"image_size {self.image_size} is too small for a {self.grid}x{self.grid} grid")
        if not 1 <= self.min_objects < self.max_objects <= self.grid ** 2:
            raise ValueError(f"need 1 <= min_objects < max_objects <= {self.grid ** 2}, got "
                             f"{self.min_objects}, {self.max_objects}")
        unknown = [c for c in self.colors if c not in PALETTE]
        if unknown or len(self.colors) < 2 or len(set(self.colors)) != len(self.colors):
            raise ValueError(f"colors must be 2+ distinct values from {list(PALETTE)}, got {list(self.colors)}")
        if not self.categories or any(c not in CATEGORIES for c in self.categories):
            raise ValueError(f"categories must be from {list(CATEGORIES)}, got {list(self.categories)}")
        if not 0 < self.object_size <= 0.9:
            raise ValueError(f"object_size must be in (0, 0.9], got {self.object_size}")
        if not 1 <= self.color_questions <= self.min_objects:
            raise ValueError(f"color_questions must be in [1, min_objects={self.min_objects}]")
        for name in ("num_pretrain", "num_train", "num_heldout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    # ------------------------------------------------------------------ the synthetic-task interface
    def scenes(self, split: str, n: int):
        """Yield (index, scene, image, questions, rng) per image of a split; heldout asks each category once,
        the other splits ask `color_questions` colours and the count."""
        split_rng = random.Random(f"spatial/{self.seed}/{split}")
        counts = _schedule(list(range(self.min_objects, self.max_objects + 1)), n, split_rng)
        colours = _schedule(list(self.colors), n, split_rng)
        for i in range(n):
            rng = random.Random(f"spatial/{self.seed}/{split}/{i}")
            scene = self.sample_scene(rng, counts[i])
            cells = rng.sample(sorted(scene.cells), len(scene.cells))
            scene.cells[cells[0]] = colours[i]  # the first queried cell carries the scheduled colour
            asked = cells[:1] if split == "heldout" else cells[:self.color_questions]
            questions = []
            if "color_at" in self.categories:
                questions += [self.ask_color(scene, cell) for cell in asked]
            if "count" in self.categories:
                questions.append(Question("count", "How many objects are there?", str(len(scene.cells)),
                                          [str(k) for k in range(self.min_objects, self.max_objects + 1)]))
            yield i, scene, self.render(scene, rng), questions, rng

    def conversations(self, scene: "SpatialScene", questions: list[Question],
                      rng: random.Random) -> list[list[Question]]:
        """Colour questions share one conversation (each names another cell); the count gets its own, since
        colour answers would tell it that those cells are occupied."""
        colour = [q for q in questions if q.category == "color_at"]
        rng.shuffle(colour)
        return ([colour] if colour else []) + [[q] for q in questions if q.category == "count"]

    def tower_classes(self) -> dict[str, int]:
        """Stage 0's tower heads: each patch's cell content (empty or a colour) and the object count."""
        return {"cell": 1 + len(self.colors), "count": self.max_objects - self.min_objects + 1}

    def tower_targets(self, scene: "SpatialScene", grid: tuple[int, int]) -> dict:
        """Per patch (row-major): 0 if the cell under the patch centre is empty, else 1 + its colour's index."""
        rows, cols = grid
        cells = []
        for r in range(rows):
            for c in range(cols):
                cell = int((r + 0.5) / rows * self.grid) * self.grid + int((c + 0.5) / cols * self.grid)
                colour = scene.cells.get(cell)
                cells.append(0 if colour is None else 1 + self.colors.index(colour))
        return {"cell": cells, "count": len(scene.cells) - self.min_objects}

    # ------------------------------------------------------------------ scenes
    def sample_scene(self, rng: random.Random, count: int) -> "SpatialScene":
        cells = rng.sample(range(self.grid ** 2), count)
        return SpatialScene({cell: rng.choice(self.colors) for cell in cells}, self.grid)

    def ask_color(self, scene: "SpatialScene", cell: int) -> Question:
        row, col = divmod(cell, self.grid)
        return Question("color_at", f"What color is the object in the {ORDINALS[row]} row, {ORDINALS[col]} column?",
                        scene.cells[cell], list(self.colors))

    def render(self, scene: "SpatialScene", rng: random.Random) -> Image.Image:
        s = self.image_size * SUPERSAMPLE
        img = Image.new("RGB", (s, s), tuple(self.background))
        draw = ImageDraw.Draw(img)
        cell, side = s / self.grid, s / self.grid * self.object_size
        for index in sorted(scene.cells):
            row, col = divmod(index, self.grid)
            x = col * cell + (cell - side) * rng.random()
            y = row * cell + (cell - side) * rng.random()
            draw.rectangle([x, y, x + side, y + side], fill=PALETTE[scene.cells[index]])
        return img.reduce(SUPERSAMPLE)


@dataclass
class SpatialScene:
    cells: dict[int, str]  # occupied cell (row-major index) -> colour
    grid: int

    def caption(self) -> str:
        """Every object, position first (the words a question repeats), then its colour; in reading order."""
        parts = [f"{ORDINALS[c // self.grid]} row, {ORDINALS[c % self.grid]} column: {self.cells[c]}"
                 for c in sorted(self.cells)]
        return f"{len(parts)} objects. " + "; ".join(parts) + "."
