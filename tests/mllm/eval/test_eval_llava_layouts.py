"""LLaVA's eval.zip layouts for ScienceQA, MME, TextVQA, GQA, VizWiz and MM-Vet (small synthetic copies), the
prompts built from each benchmark's own files, and the official treatment of degenerate answers files."""
from __future__ import annotations

import json

import pytest

from mllm.eval import MCQ_ANSWER, SHORT_ANSWER, load_benchmark
from mllm.eval.answers import match_answers, read_answers
from mllm.eval.types import BenchmarkDataError


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _answers(path, rows, model_id="llava-v1.5-13b"):
    return _jsonl(path, [{"question_id": q, "prompt": p, "text": t, "answer_id": f"a{i}", "model_id": model_id,
                          "metadata": {}} for i, (q, p, t) in enumerate(rows)])


def _rescore(bench, answers_path):
    items = bench.load()
    predictions, report = match_answers(bench, items, read_answers(answers_path))
    return bench.score(items, predictions), report


# ----------------------------------------------------------------------------------------------- ScienceQA
SQA_PROBLEMS = {
    "1": {"question": "Which animal's mouth is also adapted for bottom feeding?", "choices": ["discus", "catfish"],
          "answer": 1, "hint": "Sturgeons are bottom feeders.\nThe  's mouth points downward.\nFigure: sturgeon.",
          "image": "image.png"},
    "2": {"question": "Which closing is correct for a letter?", "choices": ["See you soon,\nJanet", "See You Soon,\nJanet",
          "Bye"], "answer": 0, "hint": "", "image": "image.png"},
    "3": {"question": "Which word would you find on a dictionary page?", "choices": ["chance", "cut"], "answer": 0,
          "hint": "", "image": None},
}


def _sqa_llava(root):
    """LLaVA's llava_test_CQM-A.json for SQA_PROBLEMS, as its converter wrote it (double spaces collapsed)."""
    rows = [{"id": "1", "image": "1/image.png", "conversations": [
                {"from": "human", "value": "<image>\nContext: Sturgeons are bottom feeders.\nThe 's mouth points "
                                           "downward.\nFigure: sturgeon.\nWhich animal's mouth is also adapted for "
                                           "bottom feeding?\nA. discus\nB. catfish"}, {"from": "gpt", "value": "B"}]},
            {"id": "2", "image": "2/image.png", "conversations": [
                {"from": "human", "value": "<image>\nWhich closing is correct for a letter?\nA. See you soon,\nJanet\n"
                                           "B. See You Soon,\nJanet\nC. Bye"}, {"from": "gpt", "value": "A"}]},
            {"id": "3", "conversations": [
                {"from": "human", "value": "Which word would you find on a dictionary page?\nA. chance\nB. cut"},
                {"from": "gpt", "value": "A"}]}]
    root.mkdir(parents=True, exist_ok=True)
    (root / "llava_test_CQM-A.json").write_text(json.dumps(rows))
    return root


def test_scienceqa_prompts_from_problems_equal_llavas_file(tmp_path):
    llava = load_benchmark("sqa", _sqa_llava(tmp_path / "llava"), image_only=False).load()
    orig = tmp_path / "orig"
    orig.mkdir()
    (orig / "problems.json").write_text(json.dumps(SQA_PROBLEMS))
    (orig / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3"]}))
    ours = load_benchmark("sqa", orig, image_only=False).load()
    assert [it.prompt for it in ours] == [it.prompt for it in llava]
    assert "\nThe 's mouth" in ours[0].prompt  # LLaVA's converter collapses the blanked name's double space
    assert ours[0].prompt.endswith("B. catfish\n" + MCQ_ANSWER)
    assert [it.target for it in llava] == [it.target for it in ours]  # answers from the gpt turn (multi-line options)
    assert llava[1].target == {"answer": 0, "n_choices": 3}
    assert llava[0].images == (str(tmp_path / "llava" / "images" / "test" / "1" / "image.png"),)


def test_scienceqa_missing_answer_leaves_img_denominator_as_eval_science_qa(tmp_path):
    root = _sqa_llava(tmp_path / "scienceqa")
    answers = _answers(tmp_path / "a.jsonl", [("1", "<image>\n...", "B"), ("3", "...", "B")])  # "2" unanswered
    res, report = _rescore(load_benchmark("sqa", root, image_only=False), answers)
    # eval_science_qa.py: total 3, correct 1 -> 33.33; the missing image problem gets the prompt 'Unknown', so
    # IMG-Accuracy = 1 correct / 1 multimodal
    assert res.metrics["accuracy"] == pytest.approx(100 / 3) and res.metrics["img_accuracy"] == 100.0
    assert res.metrics["img_n"] == 1 and report.missing == ["2"]
    assert any("left out of IMG-Accuracy's denominator" in n for n in res.metrics["notes"])


# ------------------------------------------------------------------------------------------------------ MME
def _mme_llava(root):
    qs = [("existence/1.jpg", "Is there a dog in this image?", "existence"),
          ("existence/1.jpg", "Is there a cat in this image?", "existence"),
          ("artwork/images/7.jpg", "Is this artwork by Monet?", "artwork"),
          ("artwork/images/7.jpg", "Is this artwork by Dali?", "artwork")]
    _jsonl(root / "llava_mme.jsonl", [{"question_id": q, "image": q, "text": f"{t}\n{SHORT_ANSWER}", "category": c}
                                      for q, t, c in qs])
    tool = root / "eval_tool" / "Your_Results"
    tool.mkdir(parents=True)
    (tool / "existence.txt").write_text("1.jpg\tIs there a dog in this image? Please answer yes or no.\tYes\n"
                                        "1.jpg\tIs there a cat in this image? Please answer yes or no.\tNo\n")
    (tool / "artwork.txt").write_text("7.jpg\tIs this artwork by Monet?  Please answer yes or no.\tYes\n"
                                      "7.jpg\tIs this artwork by Dali? Please answer yes or no.\tNo\n")
    return root


def test_mme_llava_layout_shared_ids_matched_by_prompt(tmp_path):
    root = _mme_llava(tmp_path / "MME")
    bench = load_benchmark("mme", root)
    items = bench.load()
    assert [it.question_id for it in items] == ["existence/1.jpg/0", "existence/1.jpg/1", "artwork/images/7.jpg/0",
                                                "artwork/images/7.jpg/1"]
    assert items[2].target == "yes"  # found through the double-space spelling, as convert_answer_to_mme.py does
    assert items[2].images == (str(root / "MME_Benchmark_release_version" / "artwork" / "images" / "7.jpg"),)
    # LLaVA's answers share one question_id per image; the prompt says which question (order swapped here)
    answers = _answers(tmp_path / "a.jsonl", [
        ("existence/1.jpg", f"Is there a cat in this image?\n{SHORT_ANSWER}", "No"),
        ("existence/1.jpg", f"Is there a dog in this image?\n{SHORT_ANSWER}", "Yes"),
        ("artwork/images/7.jpg", f"Is this artwork by Monet?\n{SHORT_ANSWER}", "Yes"),
        ("artwork/images/7.jpg", f"Is this artwork by Dali?\n{SHORT_ANSWER}", "Yes")])
    res, report = _rescore(bench, answers)
    assert report.matched == 4 and not report.duplicate
    assert res.metrics["subtasks"]["existence"]["score"] == 200.0
    assert res.metrics["subtasks"]["artwork"]["score"] == 50.0  # acc 50, acc+ 0
    assert res.metrics["perception"] == 250.0


def test_mme_question_without_answer_key_is_an_error(tmp_path):
    root = _mme_llava(tmp_path / "MME")
    (root / "eval_tool" / "Your_Results" / "artwork.txt").write_text("7.jpg\tSomething else? Please answer yes or "
                                                                     "no.\tYes\n")
    with pytest.raises(BenchmarkDataError, match="no MME answer for artwork/images/7.jpg"):
        load_benchmark("mme", root).load()


# -------------------------------------------------------------------------------------------------- TextVQA
def test_textvqa_llava_layout_and_missing_answers_leave_the_denominator(tmp_path):
    root = tmp_path / "textvqa"
    texts = ["What brand is it?\nReference OCR token: Dakota\n", "What number?\nReference OCR token: \n"]
    _jsonl(root / "llava_textvqa_val_v051_ocr.jsonl",
           [{"question_id": "img1", "image": "img1.jpg", "text": t + SHORT_ANSWER, "category": "default"}
            for t in texts])
    data = [{"question_id": 5, "image_id": "img1", "question": "what brand is it?", "answers": ["kodak"] * 10},
            {"question_id": 6, "image_id": "img1", "question": "what number?", "answers": ["7"] * 10},
            {"question_id": 5, "image_id": "img1", "question": "What brand is it?", "answers": ["dakota"] * 10}]
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    bench = load_benchmark("textvqa", root)
    items = bench.load()
    assert [it.question_id for it in items] == ["5", "6"]
    # eval_textvqa.py keys answers by (image id, lower-cased question): the later annotation wins
    assert items[0].target == {"answers": ["dakota"] * 10}
    assert load_benchmark("textvqa", root, use_ocr=False).load()[1].prompt == f"<image>\nWhat number?\n{SHORT_ANSWER}"
    answers = _answers(tmp_path / "a.jsonl", [("img1", texts[0] + SHORT_ANSWER, "Dakota")])
    res, report = _rescore(bench, answers)
    # m4c averages over the answers it is given: the unanswered question leaves the denominator
    assert res.metrics["accuracy"] == 100.0 and report.missing == ["6"]
    assert any("left out of every denominator, as eval_textvqa.py does" in n for n in res.metrics["notes"])


# ------------------------------------------------------------------------------------ GQA, VizWiz, MM-Vet
def test_gqa_vizwiz_mmvet_read_llavas_question_files(tmp_path):
    gqa = tmp_path / "gqa"
    _jsonl(gqa / "llava_gqa_testdev_balanced.jsonl",
           [{"question_id": "20", "image": "n1.jpg", "text": f"Is it red?\n{SHORT_ANSWER}", "category": "default"}])
    (gqa / "data").mkdir()
    (gqa / "data" / "testdev_balanced_questions.json").write_text(json.dumps(
        {"20": {"imageId": "n1", "question": "Is it red?", "answer": "no", "isBalanced": True,
                "types": {"structural": "verify", "semantic": "attr"}, "groups": {"global": None}}}))
    (item,) = load_benchmark("gqa", gqa).load()
    assert item.images == (str(gqa / "data" / "images" / "n1.jpg"),) and item.target["answer"] == "no"
    res, _ = _rescore(load_benchmark("gqa", gqa), _answers(tmp_path / "g.jsonl", [("20", "x", "No.")]))
    assert res.metrics["accuracy"] == 100.0  # convert_gqa_for_eval.py: rstrip('.').lower()

    viz = tmp_path / "vizwiz"
    hint = "When the provided information is insufficient, respond with 'Unanswerable'."
    _jsonl(viz / "llava_test.jsonl", [{"question_id": 0, "image": "VizWiz_test_00000000.jpg",
                                        "text": f"What is this?\n{hint}\n{SHORT_ANSWER}", "category": "default"}])
    (item,) = load_benchmark("vizwiz", viz).load()
    assert item.question_id == "VizWiz_test_00000000.jpg" and item.images[0].endswith("vizwiz/test/"
                                                                                      "VizWiz_test_00000000.jpg")
    assert load_benchmark("vizwiz", viz, unanswerable_hint=False).load()[0].prompt == \
        f"<image>\nWhat is this?\n{SHORT_ANSWER}"
    bench = load_benchmark("vizwiz", viz)
    items = bench.load()
    preds, _ = match_answers(bench, items, read_answers(_answers(tmp_path / "v.jsonl", [(0, "x", "Two dogs.")])))
    (sub,) = bench.write_submission(items, preds, tmp_path)
    assert json.loads(sub.read_text()) == [{"image": "VizWiz_test_00000000.jpg", "answer": "2 dogs"}]

    vet = tmp_path / "mm-vet"
    _jsonl(vet / "llava-mm-vet.jsonl", [{"image": "v1_0.png", "text": "What is x?", "category": "conv",
                                          "question_id": 0}])
    bench = load_benchmark("mmvet", vet)
    (item,) = bench.load()
    assert item.question_id == "v1_0" and item.prompt == "<image>\nWhat is x?" and item.target is None
    res = bench.score([item], {"v1_0": "x = 3"})
    assert res.metrics["total"] is None and any("mm-vet.json" in n for n in res.metrics["notes"])
    (sub,) = bench.write_submission([item], {"v1_0": "x = 3"}, tmp_path)
    assert json.loads(sub.read_text()) == {"v1_0": "x = 3"}  # convert_mmvet_for_eval.py's results file


def test_mmbench_llava_answers_keyed_by_index_and_round():
    from mllm.eval.suites import MMBench

    assert MMBench.llava_answer_key({"question_id": 241, "round_id": 0}) == "241"
    assert MMBench.llava_answer_key({"question_id": 241, "round_id": 2}) == "2000241"
    assert MMBench.llava_answer_key({"question_id": 1000241}) == "1000241"
