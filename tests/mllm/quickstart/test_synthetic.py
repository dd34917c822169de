"""The synthetic shapes dataset: formats, determinism, balance, and answers checked against the pixels."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mllm.constants import IMAGE_TOKEN
from mllm.quickstart.synthetic import (
    PALETTE,
    SHORT_ANSWER_SUFFIX,
    ShapesConfig,
    chance_levels,
    generate,
    normalize_answer,
    score,
)

SMALL = dict(num_pretrain=12, num_train=12, num_heldout=24)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, name: str):
    return json.loads((root / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def two_objects(tmp_path_factory):
    """Two objects per scene (left/right), all categories, 128 px so shapes can be measured from pixels."""
    root = tmp_path_factory.mktemp("two")
    cfg = ShapesConfig(seed=3, image_size=128, min_objects=1, max_objects=2, sizes=("large", "small"),
                       categories=("color", "shape", "exists", "half", "size", "binding"), num_pretrain=40, num_train=40,
                       num_heldout=60)
    return root, cfg, generate(root, cfg)


def _objects(path: Path, cfg: ShapesConfig) -> list[dict]:
    """Measure every object in an image independently of the generator: colour, shape, side, width."""
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    s = img.shape[0]
    found = []
    for name in cfg.colors:
        mask = (np.abs(img - np.array(PALETTE[name])).sum(-1) < 30)  # core pixels; anti-aliased rims excluded
        if mask.sum() < 12:
            continue
        ys, xs = np.nonzero(mask)
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        fill = mask.sum() / (w * h)
        shape = "square" if fill > 0.9 else "circle" if fill > 0.68 else "triangle"
        found.append({"color": name, "shape": shape, "side": "left" if xs.mean() < s / 2 else "right", "width": w})
    return found


def test_formats_follow_llava(two_objects):
    root, cfg, info = two_objects
    pretrain, train = _load(root, "pretrain"), _load(root, "train")
    # one turn per category, two (a true and a false probe) per yes/no category
    assert {k: v for k, v in info["counts"].items() if k != "train"} == {"pretrain": 40, "train_turns": 320,
                                                                        "heldout": 480}
    assert info["counts"]["train"] == len(train) and 40 < len(train) < 320
    assert len({r["image"] for r in train}) == 40
    for rec in pretrain:
        human, gpt = rec["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith(IMAGE_TOKEN + "\n") and human["value"].count(IMAGE_TOKEN) == 1
        assert gpt["value"][0].isupper() and gpt["value"].endswith(".") and IMAGE_TOKEN not in gpt["value"]
    for rec in train:
        conv = rec["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith(IMAGE_TOKEN + "\n")
        assert sum(t["value"].count(IMAGE_TOKEN) for t in conv) == 1
        assert all(t["value"].endswith(SHORT_ANSWER_SUFFIX) for t in conv[::2])
    turns_per_image = Counter()
    for rec in train:
        turns_per_image[rec["image"]] += len(rec["conversations"]) // 2
    assert set(turns_per_image.values()) == {len(cfg.categories) + 2}
    for rec in pretrain + train + _load(root, "heldout"):
        with Image.open(root / rec["image"]) as im:
            assert im.size == (cfg.image_size, cfg.image_size) and im.mode == "RGB"


def test_no_turn_gives_away_another_turns_answer(two_objects):
    """Within a training conversation no question or earlier answer reveals a later answer: otherwise a model
    learns to copy from the text and fails on single questions (what the held-out split asks)."""
    root, _, _ = two_objects
    multi = 0
    for rec in _load(root, "train"):
        conv = rec["conversations"]
        if len(conv) == 2:
            continue
        multi += 1
        questions, answers = [t["value"] for t in conv[::2]], [t["value"] for t in conv[1::2]]
        assert not {"yes", "no"} & set(answers)  # yes/no probes always stand alone
        for i, answer in enumerate(answers):
            others = " ".join(questions[:i] + questions[i + 1:] + answers[:i] + answers[i + 1:]).lower()
            assert answer not in others.replace("?", " ").split(), (answer, conv)
    assert multi > 5


def test_heldout_answers_match_the_pixels(two_objects):
    root, cfg, _ = two_objects
    heldout = _load(root, "heldout")
    checked = Counter()
    for rec in heldout:
        objs = _objects(root / rec["image"], cfg)
        q, ans = rec["question"], normalize_answer(rec["answer"])
        assert ans in [normalize_answer(c) for c in rec["choices"]]
        by_shape = {o["shape"]: o for o in objs}
        by_color = {o["color"]: o for o in objs}
        if "the object" in q:  # a lone object is asked about generically
            assert len(objs) == 1
            by_shape[q.split()[-1].rstrip("?")] = by_shape[q.split()[2]] = by_color[q.split()[4]] = objs[0]
        if rec["category"] == "color":
            assert by_shape[q.split()[-1].rstrip("?")]["color"] == ans
        elif rec["category"] == "shape":
            assert by_color[q.split()[4]]["shape"] == ans
        elif rec["category"] == "half":
            assert by_shape[q.split()[2]]["side"] == ans
        elif rec["category"] == "size":
            width = by_shape[q.split()[2]]["width"]
            assert (width > 0.37 * cfg.image_size) == (ans == "large"), (rec, width)
        elif rec["category"] == "exists":
            assert (q.split()[3] in by_shape) == (ans == "yes")
        else:
            color, shape = q.split()[3:5]
            assert (by_color.get(color, {}).get("shape") == shape) == (ans == "yes")
        checked[rec["category"]] += 1
    assert set(checked) == set(cfg.categories) and min(checked.values()) == cfg.num_heldout
    assert checked["exists"] == checked["binding"] == 2 * cfg.num_heldout


def test_captions_match_the_pixels(two_objects):
    root, cfg, _ = two_objects
    for rec in _load(root, "pretrain"):
        caption = rec["conversations"][1]["value"].lower()
        objs = sorted(_objects(root / rec["image"], cfg), key=lambda o: o["side"])  # "left" < "right"
        assert caption.count(" on the ") == len(objs)
        for o in objs:
            assert f"{o['color']} {o['shape']} on the {o['side']}" in caption


def test_answers_are_balanced_so_a_language_prior_scores_chance(two_objects):
    root, cfg, info = two_objects
    heldout = _load(root, "heldout")
    for cat in cfg.categories:
        counts = Counter(r["answer"] for r in heldout if r["category"] == cat)
        assert len(counts) == len(heldout[[r["category"] for r in heldout].index(cat)]["choices"])
        assert max(counts.values()) - min(counts.values()) <= 1, (cat, counts)
    chance = info["chance"]
    assert chance["color"]["uniform"] == pytest.approx(1 / 4) and chance["exists"]["uniform"] == 0.5
    assert chance["overall"]["uniform"] == pytest.approx((1 / 4 + 1 / 3 + 6 * 0.5) / 8)  # per question
    # the question text alone carries no answer: predicting each question's most frequent answer (a perfect
    # language prior, even fitted on the test set itself) stays near chance on a bigger split
    big = ShapesConfig(seed=5, num_pretrain=0, num_train=0, num_heldout=400, max_objects=2,
                       categories=("color", "shape", "exists", "half", "binding"))
    generate(root.parent / "big", big)
    recs = _load(root.parent / "big", "heldout")
    for cat in big.categories:
        by_question: dict[str, Counter] = {}
        in_cat = [r for r in recs if r["category"] == cat]
        for r in in_cat:
            by_question.setdefault(r["question"], Counter())[r["answer"]] += 1
        prior = sum(c.most_common(1)[0][1] for c in by_question.values()) / len(in_cat)
        assert prior < chance_levels(recs)[cat]["uniform"] + 0.1, (cat, prior)


def test_yes_no_questions_come_in_true_false_pairs_per_image(two_objects, tmp_path):
    root, _, _ = two_objects
    pairs: dict[tuple, list] = {}
    for r in _load(root, "heldout"):
        if r["kind"] == "yes_no":
            pairs.setdefault((r["image"], r["category"]), []).append(r)
    assert all(sorted(x["answer"] for x in p) == ["no", "yes"] for p in pairs.values())
    assert all({x["question_id"][-2:] for x in p} == {"-1", "-2"} for p in pairs.values())
    generate(tmp_path, ShapesConfig(yes_no_pairs=False, **SMALL))
    single = [r for r in _load(tmp_path, "heldout") if r["kind"] == "yes_no"]
    assert len(single) == 24 and Counter(r["answer"] for r in single) == {"yes": 12, "no": 12}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    generate(tmp_path / "a", ShapesConfig(seed=7, **SMALL))
    generate(tmp_path / "b", ShapesConfig(seed=7, **SMALL))
    generate(tmp_path / "c", ShapesConfig(seed=8, **SMALL))
    a, b, c = (_digests(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 12 + 12 + 24 + 1 + 5
    assert a.keys() == c.keys() and a["train.json"] != c["train.json"]
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) > 40


def test_splits_do_not_depend_on_each_others_sizes(tmp_path):
    """Growing one split leaves the others' samples unchanged (per-image random streams)."""
    generate(tmp_path / "a", ShapesConfig(seed=1, **SMALL))
    generate(tmp_path / "b", ShapesConfig(seed=1, **dict(SMALL, num_train=30)))
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert a["heldout.json"] == b["heldout.json"] and a["pretrain.json"] == b["pretrain.json"]
    assert all(a[k] == b[k] for k in a if k.startswith("images/heldout"))


def test_regenerating_into_the_same_dir_leaves_exactly_one_dataset(tmp_path):
    generate(tmp_path, ShapesConfig(**SMALL))
    generate(tmp_path, ShapesConfig(**dict(SMALL, num_train=5)))
    assert len(list((tmp_path / "images/train").iterdir())) == 5 == len({r["image"] for r in _load(tmp_path, "train")})


def test_blank_control_is_the_heldout_set_with_one_constant_image(tmp_path):
    generate(tmp_path, ShapesConfig(blank_color=(128, 128, 128), **SMALL))
    heldout, blank = _load(tmp_path, "heldout"), _load(tmp_path, "heldout_blank")
    assert [dict(r, image=None) for r in heldout] == [dict(r, image=None) for r in blank]
    assert {r["image"] for r in blank} == {"images/blank.png"}
    pixels = np.asarray(Image.open(tmp_path / "images/blank.png"))
    assert pixels.shape == (64, 64, 3) and (pixels == 128).all()


def test_heldout_records_are_scorable(tmp_path):
    generate(tmp_path, ShapesConfig(**SMALL))
    heldout = _load(tmp_path, "heldout")
    assert {r["kind"] for r in heldout} == {"yes_no", "short"}
    assert all((r["kind"] == "yes_no") == (r["category"] in ("exists", "binding")) for r in heldout)
    assert all(r["text"] == r["question"] + SHORT_ANSWER_SUFFIX for r in heldout)
    assert len({r["question_id"] for r in heldout}) == len(heldout)
    preds = {r["question_id"]: f" {r['answer'].upper()}.\nextra" for r in heldout if r["category"] != "shape"}
    result = score(heldout, preds)
    assert result["category/color"]["accuracy"] == 1.0 and result["category/shape"]["accuracy"] == 0.0
    assert result["overall"]["accuracy"] == pytest.approx(4 / 5) and result["overall"]["n"] == len(heldout)
    assert result["kind/yes_no"] == {"n": 48, "accuracy": 1.0}


def test_normalize_answer():
    assert normalize_answer("  Yes.\nbecause") == "yes"
    assert normalize_answer("Top  Left") == "top left"
    assert normalize_answer("") == normalize_answer(None) == ""


def test_four_objects_use_quadrants_with_distinct_colors_and_shapes(tmp_path):
    cfg = ShapesConfig(min_objects=4, max_objects=4, shapes=("circle", "square", "triangle", "cross", "diamond"),
                       num_pretrain=10, num_train=0, num_heldout=10, image_size=96)
    generate(tmp_path, cfg)
    for rec in _load(tmp_path, "pretrain"):
        caption = rec["conversations"][1]["value"].lower()
        for where in ("top left", "top right", "bottom left", "bottom right"):
            assert caption.count(where) == 1
        assert all(caption.count(c) == 1 for c in cfg.colors)


@pytest.mark.parametrize("kwargs, words", [
    (dict(colors=("red", "mauve")), "colors"),
    (dict(shapes=("circle", "circle")), "shapes"),
    (dict(max_objects=5), "max_objects"),
    (dict(max_objects=3, colors=("red", "blue")), "max_objects=3"),
    (dict(image_size=8), "image_size"),
    (dict(max_objects=3), "exists"),
    (dict(categories=("size",), sizes=("large",)), "size"),
    (dict(num_train=-1), "num_train"),
    (dict(background=(0, 0, 300)), "background"),
])
def test_bad_config_is_refused_before_writing(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        generate(tmp_path / "out", ShapesConfig(**kwargs))
    assert not (tmp_path / "out").exists()
