"""MME, scored like the official ``eval_tool/calculation.py`` after LLaVA's ``convert_answer_to_mme.py``.

Two layouts under ``data``:

- LLaVA's eval.zip (``playground/data/eval/MME``): ``llava_mme.jsonl`` (the prompts LLaVA used; one
  ``question_id`` per image, ``<subtask>[/images]/<name>``) + ``MME_Benchmark_release_version/`` (images and
  the answers, looked up as convert_answer_to_mme.py does: the question with " Please answer yes or no."
  restored) — or, without the images (re-scoring answers only), the answers of the official eval tool's
  ``eval_tool/Your_Results/<subtask>.txt`` (image, question, answer per line).
- MME's own release: ``MME_Benchmark_release_version`` (or its parent, or a folder holding ``MME_Benchmark``),
  one folder per subtask in either of the two official forms::

    <subtask>/images/<name>.<ext> + <subtask>/questions_answers_YN/<name>.txt
    <subtask>/<name>.<ext>        + <subtask>/<name>.txt
    each txt: one "question<TAB>Yes|No" line per question (two per image)

  Prompt as LLaVA's file has it: the question without " Please answer yes or no." plus the short-answer
  suffix (``llava_prompt=False`` keeps the original question).

Item ids are ``<LLaVA's question_id>/<k>`` (k: the question's line in its image's txt). Metrics: per subtask
acc, acc+ (both questions of an image right, lines paired in file order as calculation.py does) and score =
acc + acc+ (percent); ``perception`` (10 subtasks, max 2000; what LLaVA reports), ``cognition`` (4, max 800)
and their sum.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..llava_files import check_categories, find_question_file, read_questions
from ..scorers.yesno import MME_COGNITION, MME_PERCEPTION, mme_parse, mme_subtask, mme_totals
from ..types import SHORT_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions, \
    prompt_with_image

_IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
YES_NO_INSTRUCTION = "Please answer yes or no."


def _find_root(data: Path, required: bool = True) -> Path | None:
    known = set(MME_PERCEPTION + MME_COGNITION)
    for cand in (data, data / "MME_Benchmark_release_version", data / "MME_Benchmark",
                 data / "MME_Benchmark_release_version" / "MME_Benchmark"):
        if cand.is_dir() and any((cand / k).is_dir() for k in known):
            return cand
    if not required:
        return None
    raise BenchmarkDataError(f"no MME subtask folders (e.g. {data / 'existence'}) under {data}")


def _image_for(stem: str, image_dir: Path, txt: Path) -> Path:
    for ext in _IMAGE_EXTS:
        p = image_dir / f"{stem}{ext}"
        if p.exists():
            return p
    raise BenchmarkDataError(f"{txt}: no image {stem}.* in {image_dir}")


def _parse_line(line: str, txt: Path, n: int, fields: int) -> list[str]:
    parts = line.strip().split("\t")
    if len(parts) != fields or parts[-1].strip().lower() not in ("yes", "no"):
        shape = "question<TAB>Yes|No" if fields == 2 else "image<TAB>question<TAB>Yes|No"
        raise BenchmarkDataError(f"{txt}:{n}: expected '{shape}', got {line!r}")
    return parts


def release_questions(root: Path) -> list[dict]:
    """Every question of an MME release folder, in file order: task, image (path), rel (LLaVA's id), stem,
    k (line in the image's txt), question, answer."""
    out = []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (task_dir / "images").is_dir():
            image_dir, qa_dir = task_dir / "images", task_dir / "questions_answers_YN"
        else:
            image_dir = qa_dir = task_dir
        if not qa_dir.is_dir():
            raise BenchmarkDataError(f"{qa_dir} is missing (needed next to {image_dir})")
        for txt in sorted(qa_dir.glob("*.txt")):
            image = _image_for(txt.stem, image_dir, txt)
            lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
            for k, line in enumerate(lines):
                question, answer = _parse_line(line, txt, k + 1, 2)
                out.append({"task": task_dir.name, "image": image, "rel": image.relative_to(root).as_posix(),
                            "stem": txt.stem, "k": k, "question": question, "answer": answer.strip().lower()})
    if not out:
        raise BenchmarkDataError(f"no MME questions found under {root}")
    return out


def eval_tool_questions(results_dir: Path) -> list[dict]:
    """The answers listed in the official eval tool's ``Your_Results/<subtask>.txt`` (image, question, answer)."""
    out = []
    for txt in sorted(results_dir.glob("*.txt")):
        seen: dict[str, int] = {}
        for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            image, question, answer = _parse_line(line, txt, n, 3)[:3]
            stem = image.split(".")[0]
            k = seen[stem] = seen.get(stem, -1) + 1
            out.append({"task": txt.stem, "image": None, "rel": None, "stem": stem, "k": k, "question": question,
                        "answer": answer.strip().lower()})
    if not out:
        raise BenchmarkDataError(f"no answers in {results_dir}/*.txt")
    return out


def gt_question_candidates(llava_text: str) -> tuple[str, str]:
    """The original question behind a LLaVA MME prompt, as convert_answer_to_mme.py reconstructs it (two
    spellings: some MME questions have two spaces before "Please answer yes or no.")."""
    prompt = llava_text.replace(SHORT_ANSWER, "").strip()
    if YES_NO_INSTRUCTION in prompt:
        return prompt, prompt
    single = prompt + " " + YES_NO_INSTRUCTION
    return single, single.replace(" " + YES_NO_INSTRUCTION, "  " + YES_NO_INSTRUCTION)


@dataclass
class MME(Benchmark):
    data: str
    llava_prompt: bool = True

    name = "mme"
    display_name = "MME"
    main_metric = "perception"

    def _prompt(self, question: str) -> str:
        if not self.llava_prompt:
            return prompt_with_image(question)
        q = question.replace(YES_NO_INSTRUCTION, "").strip()
        return prompt_with_image(f"{q}\n{SHORT_ANSWER}")

    @staticmethod
    def _item(q: dict, prompt: str, image: str, llava_id: str) -> EvalItem:
        return EvalItem(question_id=f"{llava_id}/{q['k']}", prompt=prompt, images=(image,), target=q["answer"],
                        meta={"category": q["task"], "image": llava_id, "question": q["question"],
                              "pair": q["k"] // 2, "llava_id": llava_id})

    def load(self) -> list[EvalItem]:
        qfile = find_question_file(self.data, self.name)
        if qfile is not None:
            return self._load_llava(qfile)
        return [self._item(q, self._prompt(q["question"]), str(q["image"]), q["rel"])
                for q in release_questions(_find_root(Path(self.data)))]

    def _load_llava(self, qfile: Path) -> list[EvalItem]:
        rows = read_questions(qfile, ("question_id", "image", "text", "category"), "MME")
        check_categories(rows, qfile, MME_PERCEPTION + MME_COGNITION, "MME")
        root = qfile.parent
        release = _find_root(root / "MME_Benchmark_release_version", required=False)
        if release is not None:
            truth = release_questions(release)
        elif (root / "eval_tool" / "Your_Results").is_dir():
            truth = eval_tool_questions(root / "eval_tool" / "Your_Results")
        else:
            raise BenchmarkDataError(f"no MME answers next to {qfile}: expected MME_Benchmark_release_version/ "
                                     "(as LLaVA's convert_answer_to_mme.py) or eval_tool/Your_Results/")
        gt = {(q["task"], q["stem"], q["question"]): q for q in truth}
        image_root = release or root / "MME_Benchmark_release_version"
        if not self.llava_prompt:
            raise BenchmarkDataError("llava_prompt=false needs MME's own files, not LLaVA's question file")
        items = []
        for n, r in enumerate(rows, 1):
            stem = str(r["question_id"]).split("/")[-1].split(".")[0]
            q = next((gt[(r["category"], stem, c)] for c in gt_question_candidates(r["text"])
                      if (r["category"], stem, c) in gt), None)
            if q is None:
                raise BenchmarkDataError(f"{qfile}:{n}: no MME answer for {r['question_id']} {r['text']!r} "
                                         "(convert_answer_to_mme.py would raise KeyError)")
            items.append(self._item(q, prompt_with_image(r["text"]), str(image_root / r["image"]),
                                    str(r["question_id"])))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        items, texts = gather_predictions(items, predictions, notes, self.missing_answers)
        if any(it.question_id not in predictions for it in items):
            notes.append("MME: the official tool only sees the answers LLaVA's converter writes and pairs them two "
                         "by two per subtask file, so with answers missing it misaligns or stops (assert); here a "
                         "missing answer is wrong and its image misses acc+")
        sanitized = sum(1 for t in texts if any(c in t for c in "\t\r\n"))
        if sanitized:
            notes.append(f"{sanitized} answers contain tabs/newlines, which break the official results file; "
                         "they were replaced by spaces before parsing")
        groups: dict[str, dict[tuple, list]] = {}
        per_sample = {}
        for it, text in zip(items, texts):
            parsed = mme_parse(text.replace("\t", " ").replace("\r", " ").replace("\n", " "))
            key = (it.meta["image"], it.meta["pair"])
            groups.setdefault(it.meta["category"], {}).setdefault(key, []).append((it.target, parsed))
            per_sample[it.question_id] = {"score": float(parsed == it.target), "parsed": parsed}
        subtasks = {task: mme_subtask(list(g.values()), task, notes) for task, g in sorted(groups.items())}
        totals = mme_totals({t: m["score"] for t, m in subtasks.items()}, notes)
        return self._result({**totals, "subtasks": subtasks}, per_sample, notes, len(items))
