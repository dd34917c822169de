"""The spatial task: every answer checked against the pixels, balance, determinism, the tower's dense targets and
the conversations' independence."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mllm.constants import IMAGE_TOKEN
from mllm.quickstart.spatial import ORDINALS, SpatialConfig
from mllm.quickstart.synthetic import PALETTE, generate

SMALL = dict(num_pretrain=8, num_train=8, num_heldout=80)


@pytest.fixture(scope="module")
def spatial(tmp_path_factory):
    root = tmp_path_factory.mktemp("spatial")
    cfg = SpatialConfig(seed=2, **SMALL)
    return root, cfg, generate(root, cfg)


def _board(path, cfg: SpatialConfig) -> dict[tuple[int, int], str]:
    """(row, column) -> colour of every object, measured from the pixels (independent of the generator)."""
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    cell = img.shape[0] // cfg.grid
    board = {}
    for name in cfg.colors:
        ys, xs = np.nonzero(np.abs(img - np.array(PALETTE[name])).sum(-1) < 30)
        for y, x in zip(ys, xs):
            board[(y // cell, x // cell)] = name
    return board


def test_every_answer_is_in_the_pixels(spatial):
    root, cfg, _ = spatial
    records = json.loads((root / "heldout.json").read_text())
    assert {r["category"] for r in records} == {"color_at", "count"} and len(records) == 2 * cfg.num_heldout
    for r in records:
        board = _board(root / r["image"], cfg)
        if r["category"] == "count":
            assert r["answer"] == str(len(board)), r
        else:
            words = r["question"].split()
            row, col = ORDINALS.index(words[-4]), ORDINALS.index(words[-2])  # "... the third row, first column?"
            assert board[(row, col)] == r["answer"], r


def test_answers_are_balanced_and_chance_is_a_quarter(spatial):
    root, cfg, info = spatial
    records = json.loads((root / "heldout.json").read_text())
    for category, values in (("color_at", cfg.colors), ("count", ["2", "3", "4", "5"])):
        counts = Counter(r["answer"] for r in records if r["category"] == category)
        assert set(counts) == set(values) and max(counts.values()) - min(counts.values()) <= 1, counts
    assert info["chance"]["overall"] == {"n": 160, "uniform": 0.25, "majority": 0.25}


def test_captions_and_training_conversations(spatial):
    root, cfg, _ = spatial
    for record in json.loads((root / "pretrain.json").read_text()):
        board = _board(root / record["image"], cfg)
        caption = record["conversations"][1]["value"]
        assert caption.startswith(f"{len(board)} objects. ")
        for (row, col), colour in board.items():
            assert f"{ORDINALS[row]} row, {ORDINALS[col]} column: {colour}" in caption
    train = json.loads((root / "train.json").read_text())
    for record in train:  # the count is never in a conversation whose other answers reveal occupied cells
        turns = record["conversations"]
        assert turns[0]["value"].startswith(IMAGE_TOKEN + "\n")
        questions = [t["value"] for t in turns[::2]]
        assert len(questions) == 1 or not any("How many" in q for q in questions)
    assert len(train) == 2 * cfg.num_train


def test_output_is_a_pure_function_of_the_config(tmp_path):
    generate(tmp_path / "a", SpatialConfig(seed=4, num_pretrain=3, num_train=3, num_heldout=3))
    generate(tmp_path / "b", SpatialConfig(seed=4, num_pretrain=3, num_train=3, num_heldout=3))
    for name in ("pretrain.json", "train.json", "heldout.json", "images/heldout/000002.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_tower_targets_name_the_cell_under_each_patch():
    cfg = SpatialConfig()
    _, scene, _, _, _ = next(iter(cfg.scenes("x", 1)))
    aligned = cfg.tower_targets(scene, (4, 4))
    assert aligned["count"] == len(scene.cells) - cfg.min_objects
    assert aligned["cell"] == [0 if c not in scene.cells else 1 + cfg.colors.index(scene.cells[c]) for c in range(16)]
    fine = np.array(cfg.tower_targets(scene, (8, 8))["cell"]).reshape(8, 8)  # 2x2 patches per cell
    assert (fine == np.array(aligned["cell"]).reshape(4, 4).repeat(2, 0).repeat(2, 1)).all()
    assert set(cfg.tower_classes()) == {"cell", "count"} and cfg.tower_classes()["cell"] == 1 + len(cfg.colors)


@pytest.mark.parametrize("changes,match", [
    (dict(grid=9), "grid must be"),
    (dict(min_objects=3, max_objects=3), "min_objects < max_objects"),
    (dict(colors=("red", "teal")), "colors must be"),
    (dict(categories=("shape",)), "categories must be"),
    (dict(color_questions=3), "color_questions"),
])
def test_bad_knobs_are_named(changes, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        generate(tmp_path, SpatialConfig(**changes))
