"""Answer normalisation and per-question scores against golden values produced by the official code
(LLaVA's m4c_evaluator / eval_pope / eval_science_qa, GT-Vision-Lab vqaEval.py, VizWiz's VQAEval, MME's
calculation.py, VLMEvalKit's can_infer), quirks included."""
import pytest

from mllm.eval.scorers import (can_infer, circular_hits, evalai_normalize, mme_parse, mme_subtask, pope_metrics,
                               pope_parse, rotate_options, sqa_parse, sqa_pred_index, textvqa_accuracy,
                               vizwiz_accuracy, vqa_eval_accuracy)
from mllm.eval.scorers.vqa import CONTRACTIONS, VIZWIZ_CONTRACTIONS
from mllm.eval.scorers.yesno import mme_totals

EVALAI = {
    "Yes.": "yes", "Two dogs": "2 dogs", "the Red car!": "red car", "It's a man's hat": "it 's man 's hat",
    "10,000": "10000", "1,000 people": "1000 people", "3.14": "3.14", "1.5.": "1.5", "dont": "don't", "Im": "im",
    "isnt it": "isn't it", "somebody'd": "somebodyd", "e-mail": "e mail", "red/white": "red white",
    "hello , world": "hello world", "a": "", "an apple": "apple", "None": "0", "ten.": "10", "Café": "café",
    "yes\nno": "yes no", "  two  ": "2", "(A)": "", "u.s.a.": "usa", "what's up?": "what 's up", "don’t": "don’t",
    # re.UNICODE (32) is passed as the period substitution's *count*: only 32 of the 40 periods go
    "x." * 40: "x" * 33 + ".x" * 7 + ".", "٣ dogs": "٣ dogs", "2 ,000": "2 000", "let's go": "let 's go",
}


@pytest.mark.parametrize("text,expected", EVALAI.items())
def test_evalai_normalize_matches_llava_m4c(text, expected):
    assert evalai_normalize(text) == expected


def test_contraction_tables():
    assert len(CONTRACTIONS) == 120 and CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["somebody'd"] == "somebodyd"
    assert len(VIZWIZ_CONTRACTIONS) == 120
    assert VIZWIZ_CONTRACTIONS["dont"] == "don’t" and VIZWIZ_CONTRACTIONS["cant"] == "can't"
    assert VIZWIZ_CONTRACTIONS["couldn'tve"] == "couldn’t’ve" and VIZWIZ_CONTRACTIONS["weve"] == "we've"
    assert VIZWIZ_CONTRACTIONS["’ows’at"] == "’ow’s’at"


VQA_EVAL = [  # (answer, ten human answers, vqaEval.py accuracy in percent)
    ("2", ["2"] * 10, 100.0), ("two", ["2"] * 10, 0.0),  # humans agree -> no normalisation at all
    ("two", ["2"] * 9 + ["3"], 100.0), ("dog", ["dog"] * 3 + ["cat"] * 7, 90.0),
    ("dog", ["dog"] * 2 + ["cat"] * 8, 60.0), ("dog", ["dog"] + ["cat"] * 9, 30.0),
    ("Dog.", ["dog"] * 10, 0.0), ("Dog.", ["dog"] * 5 + ["Dog"] * 5, 100.0),
    ("the dog", ["dog"] * 4 + ["a dog"] * 6, 100.0), ("red/white", ["red white"] * 4 + ["red"] * 6, 100.0),
    ("dont", ["don't"] * 6 + ["no"] * 4, 100.0), ("", ["yes"] * 10, 0.0), ("yes", [""] * 3 + ["yes"] * 7, 100.0),
]


@pytest.mark.parametrize("answer,humans,expected", VQA_EVAL)
def test_vqa_eval_accuracy(answer, humans, expected):
    dicts = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(humans)]
    assert round(100 * vqa_eval_accuracy(answer, dicts), 10) == expected
    assert round(100 * vqa_eval_accuracy(answer, humans), 10) == expected  # plain strings get distinct ids


def test_vqa_eval_identical_dicts_drop_out_together():
    # vqaEval.py leaves a human answer out by dict inequality: identical dicts (no answer_id) vanish together
    same = [{"answer": "dog"}] * 4 + [{"answer": "cat", "answer_id": i} for i in range(6)]
    assert vqa_eval_accuracy("dog", same) == pytest.approx(0.6)  # vqaEval.py on these dicts: 60.0
    assert vqa_eval_accuracy("dog", ["dog"] * 4 + ["cat"] * 6) == pytest.approx(1.0)


VIZWIZ = [
    ("unanswerable", ["unanswerable"] * 10, 100.0), ("Unanswerable.", ["unanswerable"] * 4 + ["blue"] * 6, 100.0),
    ("dont", ["don’t"] * 3 + ["x"] * 7, 90.0), ("dont", ["don't"] * 10, 0.0),  # VizWiz's curly-quote table
    ("two", ["2"] * 10, 100.0), ("two", ["two"] * 10, 0.0),  # the answer is normalised, humans never are
    ("The Blue", ["blue"] * 2 + ["Blue"] * 8, 60.0),
]


@pytest.mark.parametrize("answer,humans,expected", VIZWIZ)
def test_vizwiz_accuracy(answer, humans, expected):
    assert round(100 * vizwiz_accuracy(answer, [{"answer": a} for a in humans]), 10) == expected


TEXTVQA = [
    ("Dakota", ["dakota"] * 10, 1.0), ("dakota digital", ["dakota"] * 5 + ["dakota digital"] * 5, 1.0),
    ("stop", ["stop"] * 2 + ["go"] * 8, 0.6), ("STOP.", ["stop"] * 3 + ["Stop"] + ["go"] * 6, 1.0),
    ("", ["a"] * 10, 1.0),  # "a" is an article: every human answer normalises to "" like the empty answer
]


@pytest.mark.parametrize("answer,humans,expected", TEXTVQA)
def test_textvqa_accuracy(answer, humans, expected):
    assert textvqa_accuracy(answer, humans) == pytest.approx(expected, abs=1e-12)


POPE_PARSE = {
    "Yes": "yes", "No": "no", "no": "no", "NO": "yes", "No.": "no", "Not sure.": "yes", "Yes, there is a dog.": "yes",
    "Yes, but not a cat.": "no", "There is no dog.": "no", "no\nthere": "yes", "No!": "yes", "nope": "yes",
    "I do not know": "no", "Yes. No.": "yes", "yes,no": "yes", "No, there isn't.": "no", "": "yes", "not": "no",
    "Nope, not really": "no",
}


@pytest.mark.parametrize("text,expected", POPE_PARSE.items())
def test_pope_parse(text, expected):
    assert pope_parse(text) == expected


def test_pope_metrics_match_eval_pope():
    texts = ["Yes", "No", "yes", "No, there is not", "Yes.", "no", "NO", "Not sure", "Yes", "No"]
    labels = ["yes", "no", "no", "yes", "yes", "no", "no", "yes", "yes", "yes"]
    notes = []
    m = pope_metrics([pope_parse(t) for t in texts], labels, "t", notes)
    # eval_pope.py printed: TP 4 FP 2 TN 2 FN 2, Accuracy 0.6, Precision/Recall/F1 0.6666666666666666, Yes ratio 0.6
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (4, 2, 2, 2)
    assert m["accuracy"] == 100 * 0.6 and m["yes_ratio"] == 100 * 0.6
    assert m["precision"] == m["recall"] == m["f1"] == 100 * 0.6666666666666666
    assert notes == []


def test_pope_metrics_zero_denominators_are_defined_and_noted():
    notes = []
    m = pope_metrics(["no", "no"], ["yes", "no"], "all-no", notes)  # eval_pope.py: ZeroDivisionError
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 50.0
    assert any("precision" in n and "ZeroDivisionError" in n for n in notes)
    notes = []
    m = pope_metrics([], [], "empty", notes)
    assert m["accuracy"] is None and m["yes_ratio"] is None and len(notes) == 5


MME_PARSE = {
    "Yes": "yes", "No": "no", "yes.": "yes", "no.": "no", "Yes, there is.": "yes", "Not at all": "no", "nope": "no",
    "The answer is yes": "other", "nyes": "yes", "noyes": "no", "": "other", "Y": "other", "It is a dog": "other",
    "İyes": "other",  # 'İ'.lower() is two characters, pushing 'yes' out of the 4-character prefix
    "NO": "no",
}


@pytest.mark.parametrize("text,expected", MME_PARSE.items())
def test_mme_parse(text, expected):
    assert mme_parse(text) == expected


def test_mme_subtask_and_totals():
    notes = []
    groups = [[("yes", "yes"), ("no", "no")], [("yes", "yes"), ("no", "yes")], [("yes", "other"), ("no", "no")]]
    m = mme_subtask(groups, "existence", notes)
    assert m["acc"] == pytest.approx(100 * 4 / 6) and m["acc_plus"] == pytest.approx(100 / 3)
    assert m["score"] == 4 / 6 * 100 + 1 / 3 * 100 and m["other"] == 1 and notes == []
    totals = mme_totals({"existence": 150.0, "count": 100.0, "code_reasoning": 50.0}, notes)
    assert totals == {"perception": 250.0, "cognition": 50.0, "total": 300.0}
    assert any("absent" in n for n in notes)
    notes = []
    mme_subtask([[("yes", "other"), ("no", "other")]], "count", notes)
    assert any("ValueError" in n for n in notes)


SQA_PARSE = {
    "A": "A", "B": "B", "E": "E", "F": "FAILED", "A.": "FAILED", "A. cat": "A", "B. ": "B", "The answer is C.": "C",
    "The answer is C": "FAILED",  # the regex's '.' needs one more character
    "The answer is C and The answer is D.": "FAILED", "(A)": "FAILED", "a": "FAILED", "": "FAILED",
    "C. The answer is D.": "C", "The answer is Z.": "Z",
}


@pytest.mark.parametrize("text,expected", SQA_PARSE.items())
def test_sqa_parse(text, expected):
    assert sqa_parse(text) == expected


def test_sqa_pred_index():
    assert sqa_pred_index("B", 3) == 1
    assert sqa_pred_index("D", 3) == -1 and sqa_pred_index("Z", 5) == -1 and sqa_pred_index("FAILED", 5) == -1


CHOICES = {"A": "cat", "B": "dog", "C": "red apple", "D": "blue"}
CAN_INFER = {
    "A": "A", "B.": "B", "(C)": "C", "The answer is D": "D", "I think it's a dog": "B", "cat": "A",
    "Cat and dog": False,
    "A dog": "A", "A B": False, "Z": "Z", "Cannot determine the answer": "Z",
    "Sorry, I can't help with images of people yet.": "Z", "C is the answer here for sure": False,
    "The correct answer is **B**": "B", "**D**": "D", "": False, "red apple": "C", "Answer: C, red apple": "C",
    "A big red apple on the table": "C", "E": False,
}


@pytest.mark.parametrize("text,expected", CAN_INFER.items())
def test_can_infer_matches_vlmevalkit(text, expected):
    assert can_infer(text, dict(CHOICES)) == expected


def test_circular_hits_need_every_rotation():
    rows = [{"g_index": 1, "gt": "A", "prediction": "A", "choices": {"A": "x", "B": "y"}},
            {"g_index": 1, "gt": "B", "prediction": "B", "choices": {"A": "y", "B": "x"}},
            {"g_index": 2, "gt": "A", "prediction": "A", "choices": {"A": "x", "B": "y"}},
            {"g_index": 2, "gt": "B", "prediction": "I cannot tell", "choices": {"A": "y", "B": "x"}}]
    assert circular_hits(rows) == {1: 1, 2: 0}


def test_rotate_options():
    assert rotate_options(["a", "b", "c"], "A", 1) == (["b", "c", "a"], "C")
    assert rotate_options(["a", "b", "c"], "C", 2) == (["c", "a", "b"], "A")
    assert rotate_options([], "A", 0) == ([], "A")
