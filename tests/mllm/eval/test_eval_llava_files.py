"""LLaVA-1.5's own eval files: LLaVA-v1.5-13B's published POPE answers re-scored through `eval --answers` give
exactly what LLaVA's eval_pope.py prints, prompts built from POPE's files equal LLaVA's question file byte for
byte, and bad answers files / mismatched question files are reported, not absorbed (fixtures: see
fixtures/llava_v15_13b_pope/README.md)."""
from __future__ import annotations

import json
import lzma
import math
from pathlib import Path

import pytest

from mllm.cli import main
from mllm.eval import load_benchmark
from mllm.eval.answers import match_answers, read_answers

FIXTURE = Path(__file__).parent / "fixtures" / "llava_v15_13b_pope"

# What LLaVA's unchanged llava/eval/eval_pope.py prints on these files (TP FP TN FN, accuracy, precision,
# recall, F1, yes ratio).
EVAL_POPE_PRINTS = {
    "adversarial": ((1182, 117, 1383, 318), 0.855, 0.9099307159353349, 0.788, 0.8445873526259379, 0.433),
    "random": ((1182, 31, 1379, 318), 0.8800687285223368, 0.9744435284418796, 0.788, 0.8713601179506082,
               0.4168384879725086),
    "popular": ((1182, 59, 1441, 318), 0.8743333333333333, 0.9524576954069299, 0.788, 0.8624589565851879,
                0.4136666666666667),
}


def _unxz(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(lzma.decompress(src.read_bytes()))
    return dst


@pytest.fixture(scope="module")
def llava_pope(tmp_path_factory) -> Path:
    """LLaVA's playground/data/eval/pope layout: question file, POPE's first-revision labels, 13B answers."""
    root = tmp_path_factory.mktemp("eval") / "pope"
    _unxz(FIXTURE / "llava_pope_test.jsonl.xz", root / "llava_pope_test.jsonl")
    for split in ("adversarial", "popular", "random"):
        _unxz(FIXTURE / "coco" / f"coco_pope_{split}.json.xz", root / "coco" / f"coco_pope_{split}.json")
    _unxz(FIXTURE / "llava-v1.5-13b.jsonl.xz", root / "answers" / "llava-v1.5-13b.jsonl")
    return root


def _rescore(data: Path, answers: Path, out: Path, *extra: str) -> dict:
    assert main(["eval", "--benchmark", "pope", "--data", str(data), "--answers", str(answers),
                 "--output-dir", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_llava13b_answers_reproduce_eval_pope(llava_pope, tmp_path, capsys):
    m = _rescore(llava_pope, llava_pope / "answers" / "llava-v1.5-13b.jsonl", tmp_path / "r")
    assert "POPE [llava-v1.5-13b] f1 = 85.95" in capsys.readouterr().out
    splits = m["metrics"]["splits"]
    for split, (counts, acc, precision, recall, f1, yes) in EVAL_POPE_PRINTS.items():
        s = splits[split]
        assert (s["TP"], s["FP"], s["TN"], s["FN"]) == counts
        for key, printed in (("accuracy", acc), ("precision", precision), ("recall", recall), ("f1", f1),
                             ("yes_ratio", yes)):
            assert math.isclose(s[key] / 100, printed, rel_tol=1e-14), (split, key)
    assert round(m["main"], 3) == 85.947 and m["n"] == 8910  # published: 85.9
    assert m["run"]["model"] is None and m["run"]["answers_format"] == "llava"
    assert m["answers"]["matched"] == 8910 and m["answers"]["missing"]["count"] == 0


def test_prompts_from_popes_files_equal_llavas_question_file(llava_pope, tmp_path):
    llava = load_benchmark("pope", llava_pope).load()
    original = {it.question_id: it for it in load_benchmark("pope", llava_pope / "coco").load()}
    assert len(llava) == len(original) == 8910
    assert sum(original[it.question_id].prompt == it.prompt for it in llava) == 8910
    assert all(original[it.question_id].meta["llava_id"] == it.meta["llava_id"] for it in llava)
    # the answers file works the same through either reader
    answers = read_answers(llava_pope / "answers" / "llava-v1.5-13b.jsonl")
    bench = load_benchmark("pope", llava_pope / "coco")
    predictions, report = match_answers(bench, list(original.values()), answers)
    assert report.matched == 8910 and bench.score(list(original.values()), predictions).metrics["f1"] == \
        pytest.approx(85.947, abs=5e-4)


def test_a_later_pope_revision_is_refused_with_the_reason(llava_pope, tmp_path):
    root = tmp_path / "pope"
    root.mkdir()
    (root / "llava_pope_test.jsonl").write_bytes((llava_pope / "llava_pope_test.jsonl").read_bytes())
    (root / "coco").mkdir()
    for f in (llava_pope / "coco").iterdir():
        (root / "coco" / f.name).write_bytes(f.read_bytes())
    lines = (root / "coco" / "coco_pope_random.json").read_text().splitlines()
    extra = json.loads(lines[0]) | {"question_id": 9999}
    (root / "coco" / "coco_pope_random.json").write_text("\n".join(lines + [json.dumps(extra)]) + "\n")
    with pytest.raises(ValueError, match=r"has 2911 questions but .* 2910 'random'.*first revision"):
        load_benchmark("pope", root).load()


def test_bad_answers_file_is_counted_named_and_scored_as_eval_pope(llava_pope, tmp_path):
    lines = (llava_pope / "answers" / "llava-v1.5-13b.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    by_id = {r["question_id"]: r for r in rows}
    dropped = [2, 3, 10000005]  # two adversarial, one random question left unanswered
    kept = [r for r in rows if r["question_id"] not in dropped]
    flipped = dict(by_id[7], text="Yes" if by_id[7]["text"].startswith("No") else "No")
    bad = kept + [flipped, dict(by_id[1], question_id=123456789), dict(by_id[1], question_id=-5)]
    answers = tmp_path / "bad.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in bad))
    m = _rescore(llava_pope, answers, tmp_path / "r")
    rep = m["answers"]
    assert rep["unknown"] == {"count": 2, "ids": ["123456789", "-5"]}
    assert rep["duplicate"] == {"count": 1, "ids": ["adversarial/7"]}
    assert rep["missing"] == {"count": 3, "ids": ["adversarial/2", "adversarial/3", "random/5"]}
    notes = " ".join(m["metrics"]["notes"])
    assert "2 answers have question ids that are not in" in notes and "123456789" in notes
    assert "answered more than once; the last answer counts" in notes and "3 questions have no answer" in notes
    # eval_pope.py computes each split over the answers it gets (here: without the missing ones), the repeated
    # answer replaced by the later one
    assert m["metrics"]["splits"]["adversarial"]["n"] == 2998 and m["metrics"]["splits"]["random"]["n"] == 2909
    preds = {json.loads(x)["question_id"]: json.loads(x)["prediction"]
             for x in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()}
    assert preds["adversarial/7"] == flipped["text"] and preds["adversarial/2"] is None


def test_predictions_round_trip_and_compare_next_to_llava(llava_pope, tmp_path, capsys):
    first = _rescore(llava_pope, llava_pope / "answers" / "llava-v1.5-13b.jsonl", tmp_path / "llava")
    again = _rescore(llava_pope, tmp_path / "llava" / "predictions.jsonl", tmp_path / "ours", "--label", "ours")
    assert again["run"]["answers_format"] == "predictions"
    assert again["metrics"]["splits"] == first["metrics"]["splits"]
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "llava"), str(tmp_path / "ours"), "--output-dir",
                 str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| POPE | f1 | 85.95 | 85.95 | +0.00 |" in table and "llava-v1.5-13b" in table


def test_question_file_of_another_benchmark_is_refused_in_one_line(llava_pope, tmp_path, capsys):
    qfile, answers = llava_pope / "llava_pope_test.jsonl", llava_pope / "answers" / "llava-v1.5-13b.jsonl"
    out = ["--output-dir", str(tmp_path / "o")]
    assert main(["eval", "--benchmark", "mme", "--data", str(qfile), "--answers", str(answers), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is LLaVA's question file for 'pope', not for 'mme'" in err
    renamed = tmp_path / "questions.jsonl"
    renamed.write_bytes(qfile.read_bytes())
    assert main(["eval", "--benchmark", "mme", "--data", str(renamed), "--answers", str(answers), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "this is not LLaVA's MME question file" in err
    for not_answers in (qfile, llava_pope / "coco" / "coco_pope_random.json"):  # question / label files
        assert main(["eval", "--benchmark", "pope", "--data", str(llava_pope), "--answers", str(not_answers),
                     "--output-dir", str(tmp_path / "o")]) == 2
        assert "not an answer" in capsys.readouterr().err


def test_answers_that_match_nothing_are_refused(llava_pope, tmp_path, capsys):
    wrong = tmp_path / "mme.jsonl"
    wrong.write_text(json.dumps({"question_id": "code_reasoning/0020.png", "prompt": "x", "text": "Yes"}) + "\n")
    assert main(["eval", "--benchmark", "pope", "--data", str(llava_pope), "--answers", str(wrong),
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert "none of the 1 answers" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_check_script_passes_on_the_pope_files(llava_pope, capsys):
    """scripts/check_llava_eval.py (what users run for ScienceQA and MME, whose files cannot ship) on POPE."""
    from mllm.eval.llava_check import main as check

    assert check([str(llava_pope.parent), "--benchmark", "pope"]) == 0
    out = capsys.readouterr().out
    assert "PASS  pope     rescore" in out and "PASS  pope     prompts  8910/8910 identical" in out
    assert "prompts byte-identical to LLaVA's: 8,910/8,910" in out
