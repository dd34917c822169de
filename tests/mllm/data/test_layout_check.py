"""`data check --layout llava` on a toy LLaVA data root: clean, then broken in the ways downloads break."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from mllm.cli import main as cli_main
from mllm.data import llava_layout as L
from mllm.data.layout_check import check_llava_root, read_json_file

RECIPE_BENCHMARKS = ["pope", "mme", "gqa", "textvqa", "sqa"]


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    from mllm.recipe.synthetic import write_llava_root

    root = tmp_path_factory.mktemp("llava") / "data"
    write_llava_root(root, image_size=28)
    return root


@pytest.fixture
def root(clean_root, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(clean_root, copy)
    return copy


def _check(root, **kw):
    return check_llava_root(root, benchmarks=RECIPE_BENCHMARKS, progress=False, **kw)


def test_clean_root_has_no_errors_and_reports_what_it_found(root):
    report = _check(root, full=True)
    assert report.errors == []
    summary = dict(report.summary)
    assert "24 records" in summary["pretrain"] and "74 records (2 text-only)" in summary["mix665k"]
    for prefix in ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K",
                   "vg/VG_100K_2"):
        assert "4 images referenced, 4/4 checked present" in summary[f"mix665k:{prefix}"]
    assert "16 questions" in summary["eval:pope"] and "40 questions" in summary["eval:sqa"]
    # a toy root is not LLaVA's: the counts are named against LLaVA's 558,128 / 665,298, as warnings
    warnings = [f.line() for f in report.warnings]
    assert any("558,128" in w for w in warnings) and any("665,298" in w for w in warnings)
    assert sum("eval.zip" in w for w in warnings) == 1  # one problem, one line: eval.zip is not extracted


def test_broken_layout_names_each_problem_in_one_line(root, capsys):
    shutil.rmtree(root / "gqa" / "images")  # a missing image folder
    pretrain = root / L.PRETRAIN.path
    pretrain.write_bytes(pretrain.read_bytes()[: pretrain.stat().st_size // 2])  # an interrupted download
    pope = root / "eval" / "pope" / "coco" / "coco_pope_random.json"  # POPE's 2023-10 revision: 3,000 questions
    line = {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a car in the image?",
            "label": "no"}
    pope.write_text("".join(json.dumps({**line, "question_id": i}) + "\n" for i in range(1, 3001)))

    status = cli_main(["data", "check", "--layout", "llava", str(root), "--benchmarks", ",".join(RECIPE_BENCHMARKS),
                       "--no-progress"])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    errors = [line for line in out if line.startswith("ERROR")]
    assert len(errors) == 3, errors
    assert sum("gqa/images/: image folder missing" in e for e in errors) == 1
    assert sum("blip_laion_cc_sbu_558k.json: truncated JSON" in e for e in errors) == 1
    assert sum("coco_pope_random.json has 3,000 questions: a later POPE revision" in e and "2,910" in e
               for e in errors) == 1
    # and where to get each broken piece
    assert any("hf download liuhaotian/LLaVA-Pretrain" in line for line in out)
    assert any("https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip" in line for line in out)
    assert any("AoiDragon/POPE/e3e39262c85a6a83f26cf5094022a782cb0df58d" in line for line in out)


def test_known_later_pope_revision_is_named_by_checksum(root, monkeypatch):
    pope = root / "eval" / "pope" / "coco" / "coco_pope_random.json"
    from mllm.data.layout_check import sha256_of

    later = L.POPE_OTHER_REVISIONS[1]
    monkeypatch.setitem(later.sha256, "random", sha256_of(pope))  # our file stands in for that revision's
    [error] = _check(root).errors
    assert "POPE's 2023-10-09 revision (edebdda)" in error.message and "2,910" in error.message


def test_missing_images_counted_per_source_and_other_extensions_named(root):
    ocr = sorted((root / "ocr_vqa" / "images").iterdir())
    with Image.open(ocr[0]) as im:  # saved as .png under the .jpg's name: LLaVA renamed every OCR-VQA file .jpg
        im.save(ocr[0].with_suffix(".png"))
    ocr[0].unlink()
    (root / "coco" / "train2017" / "000000000001.jpg").unlink()
    report = _check(root, full=True)
    lines = [e.line() for e in report.errors]
    assert len(lines) == 2, lines
    coco = next(line for line in lines if "[mix665k:coco/train2017]" in line)
    assert "1 missing (4 images checked" in coco and "000000000001.jpg" in coco
    ocr_line = next(line for line in lines if "[mix665k:ocr_vqa/images]" in line)
    assert "exist with another extension" in ocr_line
    # sampling: a sample of 1 per source checks one image per source, deterministically
    sampled = _check(root, sample=1)
    assert all("1/1 sampled present" in text or "0/1 sampled present" in text
               for piece, text in sampled.summary if piece.startswith("mix665k:"))


def test_benchmark_reader_refusal_and_missing_benchmark(root):
    (root / "eval" / "textvqa" / "TextVQA_0.5.1_val.json").write_text('{"data": 3}')
    shutil.rmtree(root / "eval" / "scienceqa")
    lines = [e.line() for e in _check(root).errors]
    assert len(lines) == 2, lines
    assert any("the textvqa reader refuses eval/textvqa" in line for line in lines)
    assert any("[eval:sqa] eval/scienceqa is missing" in line for line in lines)


def test_read_json_file_tells_truncation_from_corruption(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"id": 1}, {"id": 2')
    assert read_json_file(path)[1].startswith("truncated JSON")
    path.write_text('[{"id": 1}, x {"id": 2}]')
    assert read_json_file(path)[1].startswith("not valid JSON (line 1")


def test_sources_lists_every_piece(capsys):
    assert cli_main(["data", "sources", "--layout", "llava", "/big/data"]) == 0
    out = capsys.readouterr().out
    assert ("hf download liuhaotian/LLaVA-Instruct-150K llava_v1_5_mix665k.json --repo-type dataset "
            "--local-dir /big/data") in out
    for url in ("http://images.cocodataset.org/zips/train2017.zip", "VG_100K_2/images2.zip",
                "train_val_images.zip", "1_GYPY5UkUy7HIcR0zq3ZCFgeZN7BAfm_", "1atZSBBrAX54yYpxtVVW33zFvcnaHeFPy"):
        assert url in out
    assert all(f"eval: {b} -> eval/" in out for b in L.EVAL_PIECES)
