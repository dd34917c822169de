"""A LLaVA-1.5 data root at toy size, in the real layouts: what the recipe's CI test trains and evaluates on,
and what `data check --layout llava` is tested against.

The pictures and questions are the quickstart's synthetic shapes (`mllm.quickstart.synthetic`); this module
only lays them out as LLaVA's files are laid out (`mllm.data.llava_layout`):

  LLaVA-Pretrain/blip_laion_cc_sbu_558k.json    one human turn (a caption instruction + <image>), one gpt turn
  LLaVA-Pretrain/images/00000/<id>.jpg
  llava_v1_5_mix665k.json                        multi-turn records whose images are spread over
  coco/train2017, gqa/images, ocr_vqa/images, textvqa/train_images, vg/VG_100K, vg/VG_100K_2  (all .jpg)
                                                 plus text-only records (no "image" key, as ShareGPT's)
  eval/pope, eval/MME/MME_Benchmark_release_version, eval/gqa/data, eval/textvqa, eval/scienceqa
                                                 the held-out questions in each benchmark's distributed format
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from ..data import llava_layout as L
from ..eval.synthetic import export_synthetic
from ..quickstart.synthetic import ShapesConfig, generate

EVAL_FORMATS = ("pope", "mme", "gqa", "textvqa", "sqa")
_FILE_NAMES = {  # how each source names its files (LLaVA's records keep these names)
    "coco/train2017": "{n:012d}.jpg", "gqa/images": "n{n:07d}.jpg", "ocr_vqa/images": "{n:010d}.jpg",
    "textvqa/train_images": "{n:016x}.jpg", "vg/VG_100K": "{n}.jpg", "vg/VG_100K_2": "{n}.jpg",
}


def _jpeg(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").save(dst, format="JPEG", quality=95)


def write_llava_root(root: str | Path, *, seed: int = 0, image_size: int = 32, num_pretrain: int = 24,
                     num_train: int = 24, num_heldout: int = 8, text_only: int = 2) -> dict:
    """Write the toy data root under `root` (replacing what an earlier call wrote); returns what went where."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = ShapesConfig(seed=seed, image_size=image_size, num_pretrain=num_pretrain, num_train=num_train,
                          num_heldout=num_heldout)
    with tempfile.TemporaryDirectory(prefix="llava-shapes-") as scratch:
        shapes = Path(scratch)
        generate(shapes, config)
        pretrain = _pretrain(shapes, root)
        mix = _mix665k(shapes, root, text_only)
        heldout = json.loads((shapes / "heldout.json").read_text())
        exported = export_synthetic(heldout, root / L.EVAL_DIR, image_root=shapes, formats=EVAL_FORMATS,
                                    layout="llava")
    return {"pretrain": pretrain, "mix665k": mix,
            "eval": {name: str(bench.data) for name, bench in exported.items()},
            "eval_questions": {name: bench.n_questions for name, bench in exported.items()}}


def _pretrain(shapes: Path, root: Path) -> int:
    records = []
    folder = root / L.PRETRAIN.image_folder
    shutil.rmtree(folder, ignore_errors=True)
    for n, record in enumerate(json.loads((shapes / "pretrain.json").read_text())):
        rel = f"00000/{n:09d}.jpg"  # LLaVA-Pretrain's names: <5-digit shard>/<9-digit id>.jpg
        _jpeg(shapes / record["image"], folder / rel)
        records.append({"id": f"{n:09d}", "image": rel, "conversations": record["conversations"]})
    path = root / L.PRETRAIN.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return len(records)


def _mix665k(shapes: Path, root: Path, text_only: int) -> dict[str, int]:
    prefixes = list(_FILE_NAMES)
    for prefix in prefixes:
        shutil.rmtree(root / prefix, ignore_errors=True)
    records, per_source, placed = [], {p: 0 for p in prefixes}, {}
    for record in json.loads((shapes / "train.json").read_text()):
        src = record["image"]
        if src not in placed:  # one image per scene, its records share it (as LLaVA's several QA sets do)
            prefix = prefixes[len(placed) % len(prefixes)]
            rel = f"{prefix}/{_FILE_NAMES[prefix].format(n=len(placed) + 1)}"
            _jpeg(shapes / src, root / rel)
            placed[src] = rel
            per_source[prefix] += 1
        records.append({"id": record["id"], "image": placed[src], "conversations": record["conversations"]})
    for n in range(text_only):  # ShareGPT-style: no "image" key
        records.append({"id": f"sharegpt-{n}", "conversations": [
            {"from": "human", "value": "Name a primary colour."}, {"from": "gpt", "value": "red"}]})
    (root / L.MIX665K.path).write_text(json.dumps(records), encoding="utf-8")
    return {**per_source, "records": len(records), "text_only": text_only}
