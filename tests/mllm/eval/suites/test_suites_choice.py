"""POPE, MME, ScienceQA-IMG, MMBench(-CN) and SEED-Bench readers on tiny files in the official layouts."""
import base64
import csv
import io
import json
import zipfile

import pytest
from PIL import Image

from mllm.eval import MCQ_ANSWER, MCQ_ANSWER_CN, SHORT_ANSWER, BenchmarkDataError, load_benchmark

SUFFIX = "\n" + SHORT_ANSWER


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_pope_splits_metrics_and_errors(tmp_path):
    root = tmp_path / "pope"
    _jsonl(root / "coco" / "coco_pope_random.json",
           [{"question_id": i + 1, "image": f"COCO_val2014_{i:012d}.jpg", "text": f"Is there a cat {i} in the image?",
             "label": lab} for i, lab in enumerate(["yes", "no", "yes", "no"])])
    _jsonl(root / "coco" / "coco_pope_popular.json",
           [{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"},
            {"question_id": 2, "image": "b.jpg", "text": "Is there a cup in the image?", "label": "no"}])
    bench = load_benchmark("pope", root)
    items = bench.load()
    assert [it.question_id for it in items][:2] == ["popular/1", "popular/2"]
    assert items[0].prompt == "<image>\nIs there a dog in the image?" + SUFFIX
    assert items[0].images == (str(root / "val2014" / "a.jpg"),)
    preds = {"random/1": "Yes, there is.", "random/2": "No.", "random/3": "NO", "random/4": "Not at all",
             "popular/1": "Yes", "popular/2": "No"}
    res = bench.score(items, preds)
    # eval_pope looks for the words 'No'/'no'/'not': "NO" and "Not at all" both count as yes
    r = res.metrics["splits"]["random"]
    assert (r["TP"], r["FP"], r["TN"], r["FN"]) == (2, 1, 1, 0)
    assert r["precision"] == pytest.approx(200 / 3) and r["recall"] == 100.0 and r["f1"] == pytest.approx(80.0)
    assert res.metrics["f1"] == pytest.approx(90.0) and res.metrics["accuracy"] == pytest.approx(87.5)
    assert res.main == res.metrics["f1"]
    res = bench.score(items, {q: "no" for q in preds})  # no 'yes' at all: eval_pope divides by zero
    assert res.metrics["splits"]["random"]["precision"] == 0.0
    assert any("ZeroDivision" in n for n in res.metrics["notes"])
    with pytest.raises(BenchmarkDataError, match="adversarial"):
        load_benchmark("pope", root, splits=("adversarial",)).load()
    _jsonl(root / "coco" / "coco_pope_random.json", [{"question_id": 1, "image": "a", "text": "t", "label": "no"}] * 2)
    with pytest.raises(BenchmarkDataError, match="appears twice"):
        bench.load()


def _mme(root):
    for task, layout in (("existence", "flat"), ("OCR", "split"), ("code_reasoning", "flat")):
        d = root / "MME_Benchmark_release_version" / task
        img_dir, qa_dir = (d / "images", d / "questions_answers_YN") if layout == "split" else (d, d)
        img_dir.mkdir(parents=True, exist_ok=True)
        qa_dir.mkdir(parents=True, exist_ok=True)
        for n in range(2):
            (img_dir / f"{n}.jpg").write_bytes(b"x")
            (qa_dir / f"{n}.txt").write_text(f"Is there a thing {n}? Please answer yes or no.\tYes\n"
                                             f"Is there no thing {n}?  Please answer yes or no.\tNo\n")
    return root


def test_mme_prompts_scores_and_totals(tmp_path):
    bench = load_benchmark("mme", _mme(tmp_path))
    items = bench.load()
    assert len(items) == 12
    it = next(i for i in items if i.question_id == "existence/0.jpg/1")
    assert it.prompt == "<image>\nIs there no thing 0?" + SUFFIX and it.target == "no"
    assert load_benchmark("mme", tmp_path, llava_prompt=False).load()[1].prompt == \
        "<image>\nIs there no thing 0?  Please answer yes or no."
    ocr = next(i for i in items if i.meta["category"] == "OCR")
    assert ocr.images[0].endswith("OCR/images/0.jpg")
    preds = {i.question_id: ("Yes" if i.target == "yes" else "No") for i in items}
    preds["existence/1.jpg/1"] = "Yes"  # one wrong answer: acc 75, acc+ 50
    res = bench.score(items, preds)
    assert res.metrics["subtasks"]["existence"]["score"] == 75.0 + 50.0
    assert res.metrics["subtasks"]["OCR"]["score"] == 200.0
    assert res.metrics["perception"] == 325.0 and res.metrics["cognition"] == 200.0 and res.metrics["total"] == 525.0
    assert res.main == 325.0 and any("absent" in n for n in res.metrics["notes"])
    res = bench.score(items, {**preds, "OCR/images/0.jpg/0": "yes\tmaybe"})
    assert any("tabs/newlines" in n for n in res.metrics["notes"])


def test_mme_bad_line_is_named(tmp_path):
    d = tmp_path / "existence"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"x")
    (d / "a.txt").write_text("Is there a cat? Please answer yes or no.\tMaybe\n")
    with pytest.raises(BenchmarkDataError, match=r"a.txt:1: expected 'question<TAB>Yes\|No'"):
        load_benchmark("mme", tmp_path).load()


def test_scienceqa(tmp_path):
    problems = {"1": {"question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0, "hint": "",
                      "image": "image.png"},
                "2": {"question": "Pick one.", "choices": ["x", "y", "z"], "answer": 2, "hint": "Read this.",
                      "image": "image.png"},
                "3": {"question": "Text only?", "choices": ["a", "b"], "answer": 1, "hint": "", "image": None}}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3"]}))
    bench = load_benchmark("sqa", tmp_path)
    items = bench.load()
    assert [i.question_id for i in items] == ["1", "2"]  # ScienceQA-IMG: image problems only
    assert items[1].prompt == "<image>\nContext: Read this.\nPick one.\nA. x\nB. y\nC. z\n" + MCQ_ANSWER
    assert items[0].images == (str(tmp_path / "images" / "test" / "1" / "image.png"),)
    assert items[0].max_new_tokens == 1024
    res = bench.score(items, {"1": "A", "2": "The answer is C."})
    assert res.metrics["img_accuracy"] == 100.0
    all_items = load_benchmark("sqa", tmp_path, image_only=False).load()
    assert all_items[2].prompt == "Text only?\nA. a\nB. b\n" + MCQ_ANSWER and all_items[2].images == ()
    res = bench.score(all_items, {"1": "A", "2": "C.", "3": "B"})  # "C." -> FAILED
    assert res.metrics["img_accuracy"] == 50.0 and res.metrics["accuracy"] == pytest.approx(200 / 3)


def _png_b64(color):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _mmbench_tsv(path, circular_rows):
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
            "split", "comment"]
    rows = [[0, "What color?", "nan", "red", "blue", "", "", "A", "color", _png_b64("red"), "s", "L", "dev", ""],
            [1, "Which animal?", "A hint.", "cat", "dog", "cow", "", "C", "animal", _png_b64("blue"), "s", "L", "dev",
             ""]]
    if circular_rows:  # VLMEvalKit's circular copies: options rotated, image cell pointing at the main row
        rows.append([1000000, "What color?", "nan", "blue", "red", "", "", "B", "color", "0", "s", "L", "dev", ""])
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(cols)
        w.writerows(rows)


def test_mmbench_tsv_with_circular_rows(tmp_path):
    tsv = tmp_path / "mmbench_dev_20230712.tsv"
    _mmbench_tsv(tsv, circular_rows=True)
    bench = load_benchmark("mmbench", tmp_path)
    items = bench.load()
    assert [i.question_id for i in items] == ["0", "1", "1000000"]
    assert items[0].prompt == "<image>\nWhat color?\nA. red\nB. blue\n" + MCQ_ANSWER
    assert items[1].prompt == "<image>\nA hint.\nWhich animal?\nA. cat\nB. dog\nC. cow\n" + MCQ_ANSWER
    assert Image.open(items[2].images[0]).getpixel((0, 0)) == (255, 0, 0)  # pointer to row 0's image
    res = bench.score(items, {"0": "A", "1": "C", "1000000": "B. red"})
    assert res.metrics["accuracy"] == 100.0 and res.metrics["circular"] is True
    res = bench.score(items, {"0": "A", "1": "C", "1000000": "A"})  # second rotation wrong -> group 0 fails
    assert res.metrics["accuracy"] == 50.0 and res.metrics["vanilla_accuracy"] == 100.0
    assert res.metrics["per_category"] == {"animal": 100.0, "color": 0.0}
    (xlsx,) = bench.write_submission(items, {"0": "A", "1": "C"}, tmp_path / "out")
    with zipfile.ZipFile(xlsx) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    header = ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]  # LLaVA's column order
    assert all(f"<t xml:space=\"preserve\">{h}</t>" in sheet for h in header)
    assert sheet.index(">prediction<") < sheet.index(">answer<") and ">hint<" not in sheet


def test_mmbench_generates_rotations_and_cn_suffix(tmp_path):
    tsv = tmp_path / "mmbench_dev_cn_20231003.tsv"
    _mmbench_tsv(tsv, circular_rows=False)
    items = load_benchmark("mmbench_cn", tsv, image_cache_dir=str(tmp_path / "cache")).load()
    assert [i.question_id for i in items] == ["0", "1000000", "1", "1000001", "2000001"]
    assert items[1].prompt == "<image>\nWhat color?\nA. blue\nB. red\n" + MCQ_ANSWER_CN
    assert items[1].target["gt"] == "B" and items[4].target["gt"] == "A"  # cow moved from C to A
    assert (tmp_path / "cache" / "0.png").exists()
    assert len(load_benchmark("mmbench_cn", tsv, circular=False, image_cache_dir=str(tmp_path / "c")).load()) == 2


def test_mmbench_bad_index(tmp_path):
    (tmp_path / "x.tsv").write_text("index\tquestion\nabc\tq\n")
    with pytest.raises(BenchmarkDataError, match="not an integer"):
        load_benchmark("mmbench", tmp_path / "x.tsv").load()


def test_seed_bench(tmp_path):
    qs = [{"question_id": "101", "question": "How many?", "choice_a": "One", "choice_b": "Two", "choice_c": "Three",
           "choice_d": "Four", "answer": "B", "data_id": "1_2.jpg", "data_type": "image", "question_type_id": 5},
          {"question_id": "v7", "question": "What happens?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
           "choice_d": "d", "answer": "D", "data_id": "7.mp4", "data_type": "video", "question_type_id": 10}]
    (tmp_path / "SEED-Bench.json").write_text(json.dumps({"questions": qs, "question_type": {"Counting": 5,
                                                                                             "Action": 10}}))
    bench = load_benchmark("seed", tmp_path)
    items = bench.load()
    assert [i.question_id for i in items] == ["101", "v7"]
    assert items[0].prompt == "<image>\nHow many?\nA. One\nB. Two\nC. Three\nD. Four\n" + MCQ_ANSWER
    assert items[1].images == (str(tmp_path / "SEED-Bench-video-image" / "10_v7.png"),)
    # no extracted frame -> no answer: convert_seed_for_submission.py counts the question wrong
    res = bench.score(items, {"101": "B"})
    assert res.metrics["accuracy"] == 50.0 and res.metrics["video_accuracy"] == 0.0
    assert any("1 video questions have no answer" in n for n in res.metrics["notes"])
    image_only = load_benchmark("seed", tmp_path, include_video=False)
    assert [i.question_id for i in image_only.load()] == ["101"]
    assert image_only.score(image_only.load(), {"101": "B"}).metrics["accuracy"] == 100.0
    res = bench.score(items, {"101": "B", "v7": "D."})  # exact string equality: "D." is wrong
    assert res.metrics["accuracy"] == 50.0 and res.metrics["per_question_type"] == {"Action": 0.0, "Counting": 100.0}


def test_mmbench_prompt_stops_at_missing_option_but_scoring_sees_all(tmp_path):
    # LLaVA's get_options stops at the first empty/NaN option; VLMEvalKit's build_choices skips it and goes on
    tsv = tmp_path / "t.tsv"
    with open(tsv, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "hint", "A", "B", "C", "answer", "category", "image"])
        w.writerow([0, "Which?", "", "cat", "nan", "cow", "C", "x", _png_b64("red")])
    bench = load_benchmark("mmbench", tsv, circular=False)
    (item,) = bench.load()
    assert item.prompt == "<image>\nWhich?\nA. cat\n" + MCQ_ANSWER
    assert item.target["choices"] == {"A": "cat", "C": "cow"}
    assert bench.score([item], {"0": "C"}).metrics["accuracy"] == 100.0
