"""VQAv2, VizWiz, TextVQA and GQA readers on tiny files in the official layouts: items, prompts, scores,
submission files, and clear errors on bad input."""
import json

import pytest

from mllm.eval import SHORT_ANSWER, BenchmarkDataError, load_benchmark

SUFFIX = "\n" + SHORT_ANSWER


def _vqav2(root, with_annotations=True, split="val2014"):
    root.mkdir(parents=True, exist_ok=True)
    qs = [{"question_id": 11, "image_id": 1, "question": "How many dogs?"},
          {"question_id": 12, "image_id": 2, "question": "Is it red?"},
          {"question_id": 13, "image_id": 2, "question": "What is it?"}]
    qfile = root / f"v2_OpenEnded_mscoco_{split}_questions.json"
    qfile.write_text(json.dumps({"data_subtype": split, "questions": qs}))
    if with_annotations:
        answers = {11: ["2"] * 9 + ["3"], 12: ["yes"] * 10, 13: ["dog"] * 2 + ["cat"] * 8}
        anns = [{"question_id": q, "image_id": 0, "answer_type": "other" if q == 13 else "yes/no", "question_type": "t",
                 "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(v)]}
                for q, v in answers.items()]
        (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": anns}))
    return root


def test_vqav2_items_score_and_submission(tmp_path):
    bench = load_benchmark("vqav2", _vqav2(tmp_path / "vqav2"), split="val2014")
    items = bench.load()
    assert [it.question_id for it in items] == ["11", "12", "13"]
    assert items[0].prompt == "<image>\nHow many dogs?" + SUFFIX
    assert items[0].images == (str(tmp_path / "vqav2" / "val2014" / "COCO_val2014_000000000001.jpg"),)
    assert items[0].max_new_tokens == 128
    preds = {"11": "Two.", "12": "Yes", "13": "A dog"}
    res = bench.score(items, preds)
    # EvalAI-normalised "2", "yes", "dog" through vqaEval.py: 100, 100 and 60 (dog: 2 of 10 humans)
    assert [round(100 * res.per_sample[q]["score"], 6) for q in ("11", "12", "13")] == [100.0, 100.0, 60.0]
    assert res.metrics["accuracy"] == pytest.approx(260 / 3)
    assert res.main == res.metrics["accuracy"] and res.metrics["main_metric"] == "accuracy"
    assert res.metrics["per_answer_type"] == {"yes/no": 100.0, "other": 60.0}
    (path,) = bench.write_submission(items, {"11": "Two.", "12": "Yes"}, tmp_path / "out")
    assert json.loads(path.read_text()) == [{"question_id": 11, "answer": "2"}, {"question_id": 12, "answer": "yes"},
                                            {"question_id": 13, "answer": ""}]


def test_vqav2_test_dev_is_server_side(tmp_path):
    root = _vqav2(tmp_path / "v", with_annotations=False, split="test-dev2015")
    bench = load_benchmark("vqav2", root)
    items = bench.load()
    assert "test2015/COCO_test2015_000000000002.jpg" in items[1].images[0]  # test-dev images live in test2015/
    res = bench.score(items, {})
    assert res.main is None and any("EvalAI" in n for n in res.metrics["notes"])
    assert bench.server_side


def test_vqav2_missing_questions_file_is_named(tmp_path):
    with pytest.raises(BenchmarkDataError, match="v2_OpenEnded_mscoco_test-dev2015_questions.json"):
        load_benchmark("vqav2", tmp_path).load()


def test_vizwiz(tmp_path):
    root = tmp_path / "vizwiz"
    (root / "Annotations").mkdir(parents=True)
    recs = [{"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answer_type": "unanswerable",
             "answerable": 0, "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10},
            {"image": "VizWiz_val_00000001.jpg", "question": "Which brand?", "answer_type": "other", "answerable": 1,
             "answers": [{"answer": "don’t", "answer_confidence": "yes"}] * 3 + [{"answer": "x"}] * 7}]
    (root / "Annotations" / "val.json").write_text(json.dumps(recs))
    bench = load_benchmark("vizwiz", root, split="val")
    items = bench.load()
    assert items[0].question_id == "VizWiz_val_00000000.jpg"
    assert items[0].prompt == ("<image>\nWhat is this?\nWhen the provided information is insufficient, respond with "
                               "'Unanswerable'." + SUFFIX)
    assert load_benchmark("vizwiz", root, split="val", unanswerable_hint=False).load()[0].prompt == \
        "<image>\nWhat is this?" + SUFFIX
    res = bench.score(items, {"VizWiz_val_00000000.jpg": "Unanswerable", "VizWiz_val_00000001.jpg": "dont"})
    # VizWiz's table maps "don't" (EvalAI's output for "dont") to nothing; "dont" itself would map to "don’t"
    assert res.per_sample["VizWiz_val_00000000.jpg"]["score"] == 1.0
    assert res.per_sample["VizWiz_val_00000001.jpg"]["score"] == 0.0
    (sub,) = bench.write_submission(items, {"VizWiz_val_00000000.jpg": "Unanswerable."}, tmp_path)
    assert json.loads(sub.read_text())[0] == {"image": "VizWiz_val_00000000.jpg", "answer": "unanswerable"}


def test_textvqa_ocr_switch_and_score(tmp_path):
    root = tmp_path / "textvqa"
    root.mkdir()
    data = [{"question_id": 5, "image_id": "abc", "question": "what brand is it?", "answers": ["dakota"] * 10,
             "ocr_tokens": ["Dakota", "digital"]},
            {"question_id": 6, "image_id": "def", "question": "what number?", "answers": ["stop"] * 2 + ["go"] * 8,
             "ocr_tokens": []}]
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    items = load_benchmark("textvqa", root).load()
    # as llava_textvqa_val_v051_ocr.jsonl: first letter upper-cased, the OCR line kept even without tokens
    assert items[0].prompt == "<image>\nWhat brand is it?\nReference OCR token: Dakota, digital" + SUFFIX
    assert items[1].prompt == "<image>\nWhat number?\nReference OCR token: " + SUFFIX
    assert items[0].images == (str(root / "train_images" / "abc.jpg"),)
    plain = load_benchmark("textvqa", root, use_ocr=False).load()
    assert plain[0].prompt == "<image>\nWhat brand is it?" + SUFFIX
    res = load_benchmark("textvqa", root).score(items, {"5": "Dakota", "6": "stop"})
    assert res.metrics["accuracy"] == pytest.approx(100 * (1.0 + 0.6) / 2)


def test_gqa(tmp_path):
    root = tmp_path / "gqa"
    root.mkdir()
    q = {"1": {"imageId": "n1", "question": "Is the cup red?", "answer": "yes", "isBalanced": True,
               "types": {"structural": "verify", "semantic": "attr"}, "groups": {"global": None}},
         "2": {"imageId": "n2", "question": "What is on the table?", "answer": "cup", "isBalanced": True,
               "types": {"structural": "query", "semantic": "rel"}, "groups": {"global": "object"}},
         "3": {"imageId": "n3", "question": "Which side?", "answer": "left", "isBalanced": False,
               "types": {"structural": "query", "semantic": "rel"}, "groups": {"global": "side"}}}
    (root / "testdev_balanced_questions.json").write_text(json.dumps(q))
    bench = load_benchmark("gqa", root)
    items = bench.load()
    assert items[1].prompt == "<image>\nWhat is on the table?" + SUFFIX
    assert items[1].images == (str(root / "images" / "n2.jpg"),)
    res = bench.score(items, {"1": "Yes.", "2": "Cup..", "3": "left"})
    # convert_gqa_for_eval: rstrip('.').lower(); eval.py: exact match over balanced questions only
    assert res.metrics["accuracy"] == 100.0 and res.metrics["binary"] == 100.0 and res.metrics["open"] == 100.0
    assert res.metrics["n_balanced"] == 2 and res.per_sample["3"]["score"] is None
    assert res.metrics["distribution"] == 0.0
    res = bench.score(items, {"1": "yes!", "2": "a cup"})
    assert res.metrics["accuracy"] == 0.0 and any("no prediction" in n for n in res.metrics["notes"])
    (sub,) = bench.write_submission(items, {"1": "Yes.", "2": "Cup"}, tmp_path)
    assert json.loads(sub.read_text())[:2] == [{"questionId": "1", "prediction": "yes"},
                                               {"questionId": "2", "prediction": "cup"}]


def test_gqa_malformed_question_is_named(tmp_path):
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps({"7": {"question": "no image id"}}))
    with pytest.raises(BenchmarkDataError, match=r"question 7: missing field\(s\) \['imageId'\]"):
        load_benchmark("gqa", tmp_path).load()
