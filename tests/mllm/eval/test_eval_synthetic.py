"""Synthetic held-out QA -> POPE / MME / VQAv2 files -> the real readers and scorers, and back."""
import json
import logging

import pytest
from PIL import Image

from mllm.eval import SHORT_ANSWER, export_synthetic
from mllm.quickstart.synthetic import ShapesConfig, generate


def _samples(tmp_path):
    (tmp_path / "imgs").mkdir()
    samples = []
    for i, color in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (8, 8), color).save(tmp_path / "imgs" / f"{i}.png")
        samples += [
            {"image": f"imgs/{i}.png", "question": f"Is the image {color}?", "answer": "Yes", "kind": "yes_no",
             "question_id": f"s{i}-yes"},
            {"image": f"imgs/{i}.png", "question": "Is the image black?", "answer": "No", "kind": "yes_no",
             "question_id": f"s{i}-no"},
            {"image": f"imgs/{i}.png", "question": "What color is the image?", "answer": color.capitalize(),
             "kind": "short", "question_id": f"s{i}-color"},
        ]
    samples.append({"image": "imgs/0.png", "question": "Is it square?", "answer": "yes", "kind": "yes_no",
                    "pope_split": "adversarial", "question_id": "odd"})  # third yes/no on image 0: MME drops it
    return samples


def test_round_trip_scores_perfect_and_wrong_answers(tmp_path):
    samples = _samples(tmp_path)
    exported = export_synthetic(samples, tmp_path / "bench", image_root=tmp_path)
    assert set(exported) == {"pope", "mme", "vqav2"}
    assert exported["mme"].dropped == 1 and exported["mme"].n_questions == 6

    pope = exported["pope"].build()
    items = pope.load()
    assert len(items) == 7 and {it.meta["split"] for it in items} == {"random", "adversarial"}
    assert items[0].prompt.startswith("<image>\n") and items[0].prompt.endswith(SHORT_ANSWER)
    assert Image.open(items[0].images[0]).size == (8, 8)
    answers = {it.question_id: ("Yes" if it.target == "yes" else "No") for it in items}
    assert pope.score(items, answers).metrics["f1"] == 100.0
    flipped = {q: ("No" if a == "Yes" else "Yes") for q, a in answers.items()}
    assert pope.score(items, flipped).metrics["splits"]["random"]["accuracy"] == 0.0

    mme = exported["mme"].build()
    items = mme.load()
    assert len(items) == 6 and all(it.meta["category"] == "existence" for it in items)
    res = mme.score(items, {it.question_id: it.target.capitalize() for it in items})
    assert res.metrics["subtasks"]["existence"] == {"acc": 100.0, "acc_plus": 100.0, "score": 200.0, "other": 0,
                                                    "n_questions": 6, "n_images": 3}
    assert res.metrics["perception"] == 200.0

    vqa = exported["vqav2"].build()
    items = vqa.load()
    assert len(items) == len(samples) and vqa.split == "val2014"
    anns = json.loads((exported["vqav2"].data / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    answer_of = {s["question_id"]: s["answer"] for s in samples}  # the raw answers: "Yes", "Red"...
    preds = {str(a["question_id"]): answer_of[a["synthetic_question_id"]] for a in anns}
    assert items[0].images[0].endswith("val2014/COCO_val2014_000000000001.png")
    res = vqa.score(items, preds)
    assert res.metrics["accuracy"] == 100.0 and res.metrics["per_answer_type"]["yes/no"] == 100.0
    assert vqa.score(items, {k: "purple" for k in preds}).metrics["accuracy"] == 0.0


def test_re_export_replaces_stale_files_and_protects_foreign_folders(tmp_path):
    samples = _samples(tmp_path)
    export_synthetic(samples, tmp_path / "bench", image_root=tmp_path)
    assert (tmp_path / "bench" / "pope" / "coco" / "coco_pope_adversarial.json").exists()
    exported = export_synthetic(samples[:3], tmp_path / "bench", image_root=tmp_path, formats=("pope",))
    assert not (tmp_path / "bench" / "pope" / "coco" / "coco_pope_adversarial.json").exists()
    assert len(exported["pope"].build().load()) == 2
    (tmp_path / "mine" / "pope").mkdir(parents=True)
    (tmp_path / "mine" / "pope" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not written by export_synthetic"):
        export_synthetic(samples, tmp_path / "mine", image_root=tmp_path)
    assert (tmp_path / "mine" / "pope" / "keep.txt").exists()


def test_quickstart_heldout_exports(tmp_path, caplog):
    generate(tmp_path / "shapes", ShapesConfig(num_pretrain=1, num_train=1, num_heldout=8))
    heldout = json.loads((tmp_path / "shapes" / "heldout.json").read_text())
    with caplog.at_level(logging.WARNING):
        exported = export_synthetic(heldout, tmp_path / "bench", image_root=tmp_path / "shapes")
    n_yes_no = sum(r["kind"] == "yes_no" for r in heldout)
    assert exported["pope"].n_questions == n_yes_no and exported["vqav2"].n_questions == len(heldout)
    assert len(exported["vqav2"].build().load()) == len(heldout)
    if "mme" not in exported:  # one yes/no question per image cannot form MME pairs: said, not hidden
        assert "no mme benchmark written" in caplog.text


def test_gqa_textvqa_sqa_in_llava_eval_layout_score_like_the_official_code(tmp_path):
    samples = [{**s, "choices": ["red", "blue", "green", "black"] if s["kind"] == "short" else ["yes", "no"]}
               for s in _samples(tmp_path)]
    exported = export_synthetic(samples, tmp_path / "eval", image_root=tmp_path,
                                formats=("pope", "mme", "gqa", "textvqa", "sqa"), layout="llava")
    where = {name: bench.data.relative_to(tmp_path / "eval").as_posix() for name, bench in exported.items()}
    assert where == {"pope": "pope", "mme": "MME/MME_Benchmark_release_version", "gqa": "gqa/data",
                     "textvqa": "textvqa", "sqa": "scienceqa"}  # LLaVA's docs/Evaluation.md folders

    gqa = exported["gqa"].build()
    items = gqa.load()
    assert len(items) == len(samples) and all(it.images[0].endswith(".jpg") for it in items)
    assert Image.open(items[0].images[0]).format == "JPEG"
    right = {it.question_id: it.target["answer"].capitalize() + "." for it in items}  # LLaVA strips '.', lowers
    assert gqa.score(items, right).metrics["accuracy"] == 100.0
    assert gqa.score(items, {q: "purple" for q in right}).metrics["accuracy"] == 0.0

    textvqa = exported["textvqa"].build()
    items = textvqa.load()
    assert "\nReference OCR token: \n" in items[0].prompt  # no OCR tokens: LLaVA's file keeps the line, empty
    right = {it.question_id: it.target["answers"][0] for it in items}
    assert textvqa.score(items, right).metrics["accuracy"] == 100.0
    assert textvqa.score(items, {q: "purple" for q in right}).metrics["accuracy"] == 0.0

    sqa = exported["sqa"].build()
    items = sqa.load()
    assert len(items) == len(samples) and all(it.meta["has_image"] for it in items)
    assert "\nA. red\nB. blue" in items[2].prompt or "\nA. yes\nB. no" in items[0].prompt
    letters = {it.question_id: "ABCD"[it.target["answer"]] for it in items}
    assert sqa.score(items, letters).metrics["img_accuracy"] == 100.0
    wrong = {q: "ABCD"[("ABCD".index(a) + 1) % 2] for q, a in letters.items()}
    assert sqa.score(items, wrong).metrics["img_accuracy"] == 0.0


@pytest.mark.parametrize("bad,match", [
    ({"kind": "multiple"}, "kind must be"), ({"answer": "maybe"}, "yes_no answer must be yes/no"),
    ({"image": "missing.png"}, "image not found"), ({"question": "a\tb"}, "tab or newline"),
    ({"answer": ""}, "missing"),
])
def test_bad_samples_are_rejected(tmp_path, bad, match):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    sample = {"image": str(tmp_path / "x.png"), "question": "Is it dark?", "answer": "yes", "kind": "yes_no", **bad}
    with pytest.raises(ValueError, match=match):
        export_synthetic([sample], tmp_path / "out")
    with pytest.raises(ValueError, match="unknown format"):
        export_synthetic([{**sample, **{"answer": "yes", "kind": "yes_no", "image": str(tmp_path / "x.png"),
                                        "question": "q"}}], tmp_path / "out", formats=("mmmu",))
