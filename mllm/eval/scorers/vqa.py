"""VQA accuracy exactly as the official tools compute it, quirks included.

Three normalisations exist and each benchmark uses a specific one:

- ``evalai_normalize``: the EvalAI answer processor (LLaVA's ``m4c_evaluator.EvalAIAnswerProcessor``): lower-case,
  drop ``,``/``?``, split ``'s``, punctuation, number words, articles, contractions. LLaVA applies it to
  every VQAv2/VizWiz prediction before upload and TextVQA scores with it on both sides.
- ``vqa_eval_accuracy``: GT-Vision-Lab ``vqaEval.py`` (what the VQAv2 server runs): normalises the answer
  and the ten human answers *only when the humans disagree*, then averages min(1, matches/3) over the ten
  leave-one-out subsets.
- ``vizwiz_accuracy``: VizWiz's evaluation code: always normalises the answer (never the humans), with a
  contraction table whose apostrophes are mostly typographic (’).

Quirks kept on purpose: the period regex ``(?!<=\\d)`` is a look-ahead typo (not a look-behind), and the
period substitution is passed ``re.UNICODE`` (= 32) as its *count*, so at most 32 periods are removed.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

_PAIRS = (
    "aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've "
    "couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've "
    "hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd "
    "howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd itd've:it'd've "
    "it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't mightnt've:mightn't've "
    "mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've neednt:needn't notve:not've "
    "oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't "
    "shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've "
    "shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've somebody'dve:somebody'd've "
    "somebodyll:somebody'll somebodys:somebody's someoned:someone'd someoned've:someone'd've "
    "someone'dve:someone'd've someonell:someone'll someones:someone's somethingd:something'd "
    "somethingd've:something'd've something'dve:something'd've somethingll:something'll thats:that's "
    "thered:there'd thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd "
    "theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas wasnt:wasn't "
    "wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll whatre:what're whats:what's "
    "whatve:what've whens:when's whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've "
    "who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're whys:why's wont:won't "
    "wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all "
    "yall'll:y'all'll y'allll:y'all'll yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've "
    "youd:you'd youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've"
)
CONTRACTIONS: dict[str, str] = dict(p.split(":") for p in _PAIRS.split())  # EvalAI / vqaEval.py table


def _vizwiz_table() -> dict[str, str]:
    """VizWiz's table: the same entries with ' turned into ’ — except the first five entries, the keys
    ``couldn'tve``/``hadn'tve`` and the values of ``weve``/``wheres``/``whove``, which kept straight quotes."""
    out = {}
    for i, (k, v) in enumerate(CONTRACTIONS.items()):
        if i < 5:
            out[k] = v
            continue
        key = k if k in ("couldn'tve", "hadn'tve") else k.replace("'", "’")
        out[key] = v if k in ("weve", "wheres", "whove") else v.replace("'", "’")
    return out


VIZWIZ_CONTRACTIONS = _vizwiz_table()
NUMBER_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP_EVALAI = re.compile(r"(?<=\d)(\,)+(?=\d)")
_COMMA_STRIP_VQA = re.compile(r"(\d)(\,)(\d)")
_PERIOD_COUNT = int(re.UNICODE)  # the official call passes the flag as the count argument


def process_punctuation(text: str, comma_strip: re.Pattern = _COMMA_STRIP_VQA) -> str:
    out = text
    has_digit_comma = comma_strip.search(text) is not None
    for p in PUNCTUATIONS:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_COUNT)


def process_digit_article(text: str, contractions: dict[str, str] = CONTRACTIONS) -> str:
    words = [NUMBER_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(contractions.get(w, w) for w in words)


def evalai_normalize(text: str) -> str:
    """LLaVA's ``EvalAIAnswerProcessor()(text)`` (used for VQAv2/VizWiz uploads and TextVQA scoring)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = process_punctuation(text, _COMMA_STRIP_EVALAI)
    return process_digit_article(text)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_eval_accuracy(answer: str, gt_answers: Sequence) -> float:
    """Per-question accuracy of GT-Vision-Lab ``vqaEval.py`` (0..1).

    ``gt_answers`` are the annotation's answer dicts (``answer``, ``answer_confidence``, ``answer_id``) or
    plain strings (given distinct ids). As in the official code, a human answer is left out by dict
    inequality, so identical dicts drop out together (impossible with VQAv2's distinct ``answer_id``s).
    """
    gts = [dict(a) if isinstance(a, dict) else {"answer": a, "answer_id": i} for i, a in enumerate(gt_answers)]
    if not gts:
        raise ValueError("vqa_eval_accuracy needs at least one human answer")
    for g in gts:
        g["answer"] = _clean(g["answer"])
    res = _clean(answer)
    if len({g["answer"] for g in gts}) > 1:
        for g in gts:
            g["answer"] = process_digit_article(process_punctuation(g["answer"]))
        res = process_digit_article(process_punctuation(res))
    accs = []
    for g in gts:
        matches = sum(1 for o in gts if o != g and o["answer"] == res)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


def vizwiz_accuracy(answer: str, gt_answers: Sequence) -> float:
    """Per-question accuracy of VizWiz's evaluation code (0..1): answer normalised, humans raw, index-based
    leave-one-out."""
    gts = [a["answer"] if isinstance(a, dict) else a for a in gt_answers]
    if not gts:
        raise ValueError("vizwiz_accuracy needs at least one human answer")
    res = process_digit_article(process_punctuation(_clean(answer)), VIZWIZ_CONTRACTIONS)
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == res)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


def textvqa_answer_scores(gt_answers: Sequence[str]) -> dict[str, float]:
    """m4c ``_compute_answer_scores``: soft score of every distinct normalised human answer."""
    answers = [evalai_normalize(a) for a in gt_answers]
    scores = {}
    for unique in set(answers):
        accs = []
        for i in range(len(answers)):
            matches = sum(1 for j, a in enumerate(answers) if j != i and a == unique)
            accs.append(min(1.0, matches / 3))
        scores[unique] = sum(accs) / len(accs)
    return scores


def textvqa_accuracy(answer: str, gt_answers: Sequence[str]) -> float:
    """m4c ``TextVQAAccuracyEvaluator`` per-question score (0..1); the official code asserts 10 answers."""
    if not gt_answers:
        return 0.0
    return textvqa_answer_scores(gt_answers).get(evalai_normalize(answer), 0.0)
