"""Example images for the demo, drawn at startup by the quickstart's scene renderer (no downloads).

They are scenes of the synthetic shapes domain the quickstart checkpoint is trained on, with questions in
the training data's wording, so the default demo has examples its default model can actually answer.
"""
from __future__ import annotations

import random
from pathlib import Path

from mllm.synthetic_shapes import IMAGE_SIZE, SHORT_ANSWER_SUFFIX, Scene, SceneObject, render_scene

# (file stem, objects as (shape, colour, size, cell), rows, question, short-answer question?)
EXAMPLES = (
    ("red-circle", [("circle", "red", "large", 0)], 1, "What color is the object?", True),
    ("blue-square", [("square", "blue", "large", 1)], 1, "What shape is the object?", True),
    ("yellow-triangle", [("triangle", "yellow", "large", 1)], 1,
     "Is the object on the left or the right side of the image?", True),
    ("green-square", [("square", "green", "large", 0)], 1, "Is there a circle in the image?", True),
    ("two-shapes", [("circle", "blue", "large", 0), ("triangle", "red", "large", 1)], 1,
     "Describe the image briefly.", False),
)


def make_examples(directory: str | Path, image_size: int = IMAGE_SIZE) -> list[tuple[str, str]]:
    """Draw the example scenes as PNGs into `directory`; return [(image path, question)] for `gr.Examples`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for stem, objects, rows, question, short in EXAMPLES:
        scene = Scene([SceneObject(shape, colour, size, cell) for shape, colour, size, cell in objects], rows)
        path = directory / f"{stem}.png"
        render_scene(scene, random.Random(f"demo/{stem}"), image_size).save(path)
        out.append((str(path), question + (SHORT_ANSWER_SUFFIX if short else "")))
    return out
