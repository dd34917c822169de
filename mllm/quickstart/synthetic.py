"""Synthetic shapes dataset for the CPU quickstart, written in LLaVA's JSON formats.

Each scene is a plain background with a few flat-coloured shapes, each in its own cell of a 2x1 (left/right)
or 2x2 grid (drawn by `mllm.synthetic_shapes`), so every question has one unambiguous answer. The splits mirror LLaVA-1.5's data:

- ``pretrain.json`` (stage 1, LCS-558K format): human ``"<image>\\n<instruction>"``, gpt caption;
- ``train.json`` (stage 2, mix665k format): multi-turn questions with the academic-VQA short-answer suffix;
- ``heldout.json``: one record per question (``question_id``, ``image``, ``question``, ``text`` = what the
  model is asked, ``answer``, ``kind`` = ``yes_no``/``short``, ``category``, ``choices``), easy to score or to
  export to POPE/MME/VQA-style files; ``heldout_blank.json`` is the same list with every image replaced by one
  constant image, the control that proves answers come from pixels and not from a language prior.

Answers are balanced per question category (a shuffled schedule of target answers drives scene sampling;
yes/no questions come as a true/false pair per image, as in MME), so a model that ignores the image scores at
chance, which ``dataset_info.json`` reports per category. Output is
a pure function of the config: every random draw comes from ``random.Random`` seeded by a string (stable
across processes), images are written as PNG without metadata and JSON with sorted keys.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from ..constants import IMAGE_TOKEN
from ..synthetic_shapes import (
    BACKGROUND,
    IMAGE_SIZE,
    PALETTE,
    SHAPES,
    SHORT_ANSWER_SUFFIX,
    SIZES,
    Scene,
    SceneObject,
    render_scene,
)

CATEGORIES = ("color", "shape", "exists", "half", "size", "binding")
YES_NO_CATEGORIES = ("exists", "binding")
CAPTION_INSTRUCTIONS = (
    "Describe the image briefly.",
    "Give a short description of this picture.",
    "What does the image show? Answer in one sentence.",
    "Write a concise caption for the image.",
    "Summarize the picture in a few words.",
)
TOWER_ATTRIBUTES = {"color": list(PALETTE), "shape": list(SHAPES), "size": list(SIZES), "side": ["left", "right"]}


@dataclass(frozen=True)
class ShapesConfig:
    """Knobs of the synthetic dataset; defaults are the quickstart's learnable setting."""

    seed: int = 0
    image_size: int = IMAGE_SIZE
    min_objects: int = 1
    max_objects: int = 1  # up to 2 uses a left/right layout, 3-4 a 2x2 grid
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    sizes: tuple[str, ...] = ("large",)
    categories: tuple[str, ...] = ("color", "shape", "exists", "half")
    yes_no_pairs: bool = True  # MME-style: each yes/no category asked twice per image, once true, once false
    num_pretrain: int = 2000  # stage-1 caption images
    num_train: int = 2000  # stage-2 conversation images (one turn per category, shuffled)
    num_heldout: int = 200  # held-out images (one question per category each)
    background: tuple[int, int, int] = BACKGROUND
    blank_color: tuple[int, int, int] | None = None  # constant image of the control; None = background

    def validate(self) -> None:
        """Raise ValueError naming the bad knob (before anything is written)."""
        if not 16 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [16, 1024], got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 4, got {self.min_objects}, {self.max_objects}")
        for name, values, known in (("colors", self.colors, PALETTE), ("shapes", self.shapes, SHAPES),
                                    ("sizes", self.sizes, SIZES), ("categories", self.categories, CATEGORIES)):
            unknown = [v for v in values if v not in known]
            if unknown or not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct values from {list(known)}, got {list(values)}")
        if self.max_objects > min(len(self.colors), len(self.shapes)):
            raise ValueError(f"max_objects={self.max_objects} needs at least that many colors and shapes "
                             "(objects in a scene have distinct colors and shapes so questions are unambiguous)")
        if min(len(self.colors), len(self.shapes)) < 2:
            raise ValueError("need at least 2 colors and 2 shapes, otherwise answers are constant")
        if "size" in self.categories and len(self.sizes) < 2:
            raise ValueError("category 'size' needs at least 2 sizes")
        if "exists" in self.categories and len(self.shapes) <= self.max_objects:
            raise ValueError(f"category 'exists' needs more shapes than max_objects={self.max_objects}, "
                             "so that a 'no' question can name an absent shape")
        for name in ("num_pretrain", "num_train", "num_heldout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("background", "blank_color"):
            rgb = getattr(self, name)
            if rgb is not None and (len(rgb) != 3 or any(not 0 <= int(c) <= 255 for c in rgb)):
                raise ValueError(f"{name} must be an RGB triple of 0-255 ints, got {rgb}")

    # The synthetic-task interface (`generate` and the stage-0 warm-ups use only these; spatial.py is another task)
    def scenes(self, split: str, n: int):
        """Yield (index, scene, image, questions, rng) for the n images of a split (see `_split`)."""
        return _split(self, split, n)

    def conversations(self, scene: "Scene", questions: list["Question"], rng: random.Random) -> list[list["Question"]]:
        return conversations(scene, questions, rng)

    def tower_classes(self) -> dict[str, int]:
        """Stage 0's tower heads: attribute -> number of classes (each read from the mean-pooled features)."""
        return {k: len(v) for k, v in TOWER_ATTRIBUTES.items()}

    def tower_targets(self, scene: "Scene", grid: tuple[int, int]) -> dict[str, int]:
        """The class of each attribute of the scene's first object (quickstart scenes hold one)."""
        obj = scene.objects[0]
        values = {"color": obj.color, "shape": obj.shape, "size": obj.size, "side": scene.side(obj)}
        return {k: TOWER_ATTRIBUTES[k].index(v) for k, v in values.items()}


@dataclass
class Question:
    category: str
    question: str
    answer: str
    choices: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "yes_no" if self.category in YES_NO_CATEGORIES else "short"


def choices_for(config: ShapesConfig, category: str) -> list[str]:
    """The answer set of a category, as written in the data: the words as they appear in captions and questions
    (lower case, like VQAv2's answers), so a tiny LLM can copy them token for token."""
    values = {"color": config.colors, "shape": config.shapes, "exists": ("yes", "no"), "binding": ("yes", "no"),
              "half": ("left", "right"), "size": config.sizes}[category]
    return list(values)


def _schedule(values, n: int, rng: random.Random) -> list:
    """n draws in which every value occurs equally often (up to rounding), in random order."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def sample_scene(config: ShapesConfig, rng: random.Random, targets: dict[str, str]) -> tuple[Scene, dict[str, int]]:
    """A random scene in which the object queried by each category has that category's target value.

    Returns the scene and, per category, the index of the queried object. Objects have distinct colours and
    distinct shapes, so "the circle" or "the red object" always names exactly one object.
    """
    k = rng.randint(config.min_objects, config.max_objects)
    rows = 1 if config.max_objects <= 2 else 2
    queried = {c: rng.randrange(k) for c in config.categories}
    colors = _assign(config.colors, k, queried.get("color"), targets.get("color"), rng)
    shapes = _assign(config.shapes, k, queried.get("shape"), targets.get("shape"), rng)
    sizes = [rng.choice(config.sizes) for _ in range(k)]
    if "size" in targets:
        sizes[queried["size"]] = targets["size"]
    cells = rng.sample(range(2 * rows), k)
    if "half" in targets:
        j = queried["half"]
        want = 0 if targets["half"] == "left" else 1
        if cells[j] % 2 != want:  # swap with an object on the wanted side, or move to a free cell there
            other = next((i for i in range(k) if cells[i] % 2 == want), None)
            if other is not None:
                cells[j], cells[other] = cells[other], cells[j]
            else:
                cells[j] = rng.choice([c for c in range(2 * rows) if c % 2 == want and c not in cells])
    objects = [SceneObject(shapes[i], colors[i], sizes[i], cells[i]) for i in range(k)]
    return Scene(objects, rows), queried


def _assign(values, k: int, index: int | None, target: str | None, rng: random.Random) -> list[str]:
    """k distinct values, with ``target`` at ``index`` when given."""
    if target is None:
        return rng.sample(list(values), k)
    rest = rng.sample([v for v in values if v != target], k - 1)
    rest.insert(index, target)
    return rest


def ask(config: ShapesConfig, scene: Scene, category: str, obj: SceneObject, target: str, rng: random.Random) -> Question:
    """The question of ``category`` about ``obj``; for the yes/no categories ``target`` says whether the probe
    names something present: ``exists`` asks for a shape (POPE-style object presence), ``binding`` for a
    colour-shape pair (a "no" may be a near miss: right colour, wrong shape)."""
    choices = choices_for(config, category)
    # a lone object is "the object": naming it by an attribute would hand that attribute to any other question
    # about the same image (a later turn could copy it from the text instead of reading the pixels)
    alone = len(scene.objects) == 1
    if category == "color":
        return Question(category, f"What color is the {'object' if alone else obj.shape}?", obj.color, choices)
    if category == "shape":
        return Question(category, f"What shape is the {'' if alone else obj.color + ' '}object?", obj.shape,
                        choices)
    if category == "half":
        return Question(category, f"Is the {'object' if alone else obj.shape} on the left or the right side of "
                        "the image?", scene.side(obj), choices)
    if category == "size":
        return Question(category, f"Is the {'object' if alone else obj.shape} large or small?", obj.size,
                        choices)
    if category == "exists":
        absent = [s for s in config.shapes if s not in {o.shape for o in scene.objects}]
        shape = obj.shape if target == "yes" else rng.choice(absent)
        return Question(category, f"Is there a {shape} in the image?", target, choices)
    present = {(o.color, o.shape) for o in scene.objects}
    if target == "yes":
        color, shape = obj.color, obj.shape
    else:
        color, shape = rng.choice(sorted((c, s) for c in config.colors for s in config.shapes if (c, s) not in present))
    return Question(category, f"Is there a {color} {shape} in the image?", target, choices)


def _split(config: ShapesConfig, split: str, n: int):
    """Yield (index, scene, image, questions, rng) per image of a split.

    Questions cover every category once, yes/no categories twice (a true and a false probe) with
    ``yes_no_pairs``: contrasting answers about one image are what teach a tiny model to compare the question
    with the picture instead of learning a per-question prior (measured: without pairs, 'exists' stayed at
    chance while colour, shape and side reached 100 %).
    """
    split_rng = random.Random(f"shapes/{config.seed}/{split}")
    plan = {c: _schedule([v.lower() for v in choices_for(config, c)], n, split_rng) for c in config.categories}
    for i in range(n):
        rng = random.Random(f"shapes/{config.seed}/{split}/{i}")  # per image: sample i never depends on others' draws
        targets = {c: plan[c][i] for c in config.categories}
        scene, queried = sample_scene(config, rng, {c: t for c, t in targets.items() if c not in YES_NO_CATEGORIES})
        image = render_scene(scene, rng, config.image_size, config.background)
        questions = []
        for c in config.categories:
            probes = [targets[c]]
            if c in YES_NO_CATEGORIES and config.yes_no_pairs:
                probes = rng.sample(["yes", "no"], 2)
            questions += [ask(config, scene, c, scene.objects[queried[c]], t, rng) for t in probes]
        yield i, scene, image, questions, rng


def conversations(scene: Scene, questions: list[Question], rng: random.Random) -> list[list[Question]]:
    """Group one image's questions into conversations in which no turn gives away another's answer.

    With a lone object the open questions (colour, shape, side, size) are independent given the image and
    share one shuffled multi-turn conversation; each yes/no probe gets a conversation of its own, since it
    reveals the shape or colour (and its true/false twin). With several objects questions must name objects
    by their attributes, so every question is its own conversation. Measured on the quickstart: when later
    turns could copy answers from earlier ones, 'exists' and 'half' stayed at chance on single questions.
    """
    if len(scene.objects) > 1:
        return [[q] for q in questions]
    open_questions = [q for q in questions if q.category not in YES_NO_CATEGORIES]
    rng.shuffle(open_questions)
    groups = ([open_questions] if open_questions else []) + [[q] for q in questions if q.category in YES_NO_CATEGORIES]
    return groups


def to_turns(questions: list[Question], prefix: str) -> list[dict]:
    """LLaVA JSON turns for ``questions``; ``prefix`` (the image marker, or a caption) opens the first."""
    turns = []
    for t, q in enumerate(questions):
        head = f"{prefix}\n" if t == 0 and prefix else ""
        turns += [{"from": "human", "value": head + q.question + SHORT_ANSWER_SUFFIX}, {"from": "gpt", "value": q.answer}]
    return turns


def generate(out_dir: str | Path, config=None) -> dict:
    """Write images and the LLaVA JSON files under ``out_dir``; return the ``dataset_info.json`` content.

    ``config`` is a task config (``ShapesConfig`` by default, or e.g. ``spatial.SpatialConfig``): its ``scenes``
    and ``conversations`` supply the images, captions and questions.

    Layout: ``images/{pretrain,train,heldout}/NNNNNN.png``, ``images/blank.png``, ``pretrain.json``,
    ``train.json``, ``heldout.json``, ``heldout_blank.json``, ``dataset_info.json``. Image paths in the
    JSON files are relative to ``out_dir`` (LLaVA's ``--image_folder``). Existing files are overwritten and
    numbered images left by an earlier run are removed, so the directory always holds exactly one dataset.
    """
    config = config or ShapesConfig()
    config.validate()
    out = Path(out_dir)
    for split in ("pretrain", "train", "heldout"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for stale in (out / "images" / split).glob("[0-9]*.png"):  # left by an earlier, bigger run
            stale.unlink()

    pretrain = []
    for i, scene, image, _, rng in config.scenes("pretrain", config.num_pretrain):
        rel = f"images/pretrain/{i:06d}.png"
        image.save(out / rel)
        instruction = rng.choice(CAPTION_INSTRUCTIONS)
        pretrain.append({"id": f"pretrain-{i:06d}", "image": rel, "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{instruction}"},
            {"from": "gpt", "value": scene.caption()}]})

    train = []
    for i, scene, image, questions, rng in config.scenes("train", config.num_train):
        rel = f"images/train/{i:06d}.png"
        image.save(out / rel)
        for j, group in enumerate(config.conversations(scene, questions, rng)):
            train.append({"id": f"train-{i:06d}-{j}", "image": rel, "conversations": to_turns(group, IMAGE_TOKEN)})

    heldout = []
    paired = set(YES_NO_CATEGORIES) if getattr(config, "yes_no_pairs", False) else set()
    for i, _, image, questions, _ in config.scenes("heldout", config.num_heldout):
        rel = f"images/heldout/{i:06d}.png"
        image.save(out / rel)
        seen: Counter = Counter()
        for q in questions:
            seen[q.category] += 1
            qid = f"heldout-{i:06d}-{q.category}" + (f"-{seen[q.category]}" if q.category in paired else "")
            heldout.append({"question_id": qid, "image": rel, "question": q.question,
                            "text": q.question + SHORT_ANSWER_SUFFIX, "answer": q.answer, "kind": q.kind,
                            "category": q.category, "choices": q.choices})

    blank_rgb = tuple(config.blank_color if config.blank_color is not None else config.background)
    Image.new("RGB", (config.image_size,) * 2, blank_rgb).save(out / "images" / "blank.png")
    heldout_blank = [dict(r, image="images/blank.png") for r in heldout]

    info = {"config": asdict(config), "counts": {"pretrain": len(pretrain), "train": len(train),
            "train_turns": sum(len(r["conversations"]) // 2 for r in train), "heldout": len(heldout)},
            "chance": chance_levels(heldout), "files": {"pretrain": "pretrain.json", "train": "train.json",
            "heldout": "heldout.json", "heldout_blank": "heldout_blank.json", "image_folder": "."}}
    for name, obj in (("pretrain", pretrain), ("train", train), ("heldout", heldout),
                      ("heldout_blank", heldout_blank), ("dataset_info", info)):
        (out / f"{name}.json").write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return info


def normalize_answer(text: str) -> str:
    """Lower-case, first line, no surrounding spaces or trailing full stop (GQA/MME-style exact match)."""
    lines = (text or "").strip().splitlines()
    return " ".join(lines[0].lower().rstrip(".").split()) if lines else ""


def chance_levels(records: list[dict]) -> dict:
    """Per category: uniform-guess accuracy (1/#choices) and the majority-answer rate; plus the overall mean."""
    out: dict = {}
    for cat in sorted({r["category"] for r in records}):
        rs = [r for r in records if r["category"] == cat]
        counts: dict[str, int] = {}
        for r in rs:
            counts[r["answer"]] = counts.get(r["answer"], 0) + 1
        out[cat] = {"n": len(rs), "uniform": 1 / len(rs[0]["choices"]), "majority": max(counts.values()) / len(rs)}
    out["overall"] = {"n": len(records), "uniform": sum(1 / len(r["choices"]) for r in records) / max(len(records), 1),
                      "majority": sum(out[c]["majority"] * out[c]["n"] for c in out) / max(len(records), 1)}
    return out


def score(records: list[dict], predictions: dict[str, str]) -> dict:
    """Exact-match accuracy after ``normalize_answer``, overall and per category and kind.

    ``predictions`` maps ``question_id`` to generated text; a missing prediction counts as wrong.
    """
    buckets: dict[str, list[int]] = {"overall": []}
    for r in records:
        ok = int(normalize_answer(predictions.get(r["question_id"], "")) == normalize_answer(r["answer"]))
        for key in ("overall", f"category/{r['category']}", f"kind/{r['kind']}"):
            buckets.setdefault(key, []).append(ok)
    return {k: {"n": len(v), "accuracy": sum(v) / len(v) if v else 0.0} for k, v in sorted(buckets.items())}
