"""`llm2clip-llava validate`: counts per reason, length histogram, shares, strict exit code."""
import json

import pytest

from mllm.cli import main as cli_main
from mllm.data.validate import main


def H(v):
    return {"from": "human", "value": v}


def G(v):
    return {"from": "gpt", "value": v}


@pytest.fixture(scope="module")
def saved_tokenizer(tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("saved_tok")
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture()
def data(tmp_path, write_records):
    records = [
        {"id": "ok1", "image": "rgb.jpg", "conversations": [H("<image>\nWhat?"), G("Noise.")]},
        {"id": "ok2", "conversations": [H("Hi"), G("Hello " * 100)]},
        {"id": "ok3", "conversations": [H("Hi"), G("Bye")]},
        {"id": "miss", "image": "nope.jpg", "conversations": [H("<image>\nq"), G("a")]},
        {"id": "zero", "image": "zero.jpg", "conversations": [H("<image>\nq"), G("a")]},
        {"id": "role", "conversations": [H("q"), {"from": "bot", "value": "a"}]},
    ]
    return write_records(tmp_path / "d.jsonl", records, "jsonl")


def test_report_and_json(data, image_dir, saved_tokenizer, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["--data", str(data), "--image-folder", str(image_dir), "--tokenizer", str(saved_tokenizer),
               "--max-length", "64", "--num-image-tokens", "8", "--json-out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "kept 3 (50.00%), skipped 3" in text and "missing" in text and "unknown_role" in text
    assert "record 3 (id='miss')" in text and "nope.jpg" in text
    report = json.loads(out.read_text())
    assert report["skip_counts"] == {"missing": 1, "empty": 1, "unknown_role": 1}
    assert report["text_only"] == 2 and report["share_text_only"] == pytest.approx(2 / 3)
    assert report["truncated"] == 1 and report["share_truncated"] == pytest.approx(1 / 3)
    assert sum(b["count"] for b in report["length_histogram"]) == 3
    assert report["length_max"] > 64  # histogram is over lengths before truncation


def test_strict_exits_nonzero_naming_the_record(data, image_dir, saved_tokenizer, capsys):
    rc = cli_main(["validate", "--data", str(data), "--image-folder", str(image_dir), "--tokenizer", str(saved_tokenizer),
                   "--strict", "--tower", "llm2clip-eva02-l-14-224"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{data}:4" in err and "record 3 (id='miss')" in err and "missing" in err


def test_limit_workers_and_bad_paths(data, image_dir, saved_tokenizer, tmp_path, capsys):
    rc = main(["--data", str(data), "--image-folder", str(image_dir), "--tokenizer", str(saved_tokenizer),
               "--limit", "3", "--workers", "2", "--process-images", "--json-out", str(tmp_path / "r.json")])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["records"] == 3 and report["skipped"] == 0 and report["num_image_tokens"] == 576
    assert cli_main(["validate", "--data", str(tmp_path / "none.json"), "--tokenizer", str(saved_tokenizer)]) == 2
    assert "none.json' does not exist" in capsys.readouterr().err
    assert cli_main(["validate", "--data", str(data), "--tokenizer", str(saved_tokenizer),
                     "--template", "chat_template"]) == 2
    assert "needs a tokenizer that has a chat template" in capsys.readouterr().err


def test_tower_and_projector_give_the_token_count(data, image_dir, saved_tokenizer, tmp_path, capsys):
    """The count comes from the projector: 576 patches of EVA02-L-14-336 pixel-shuffled 2x2 are 144 tokens."""
    base = ["--data", str(data), "--image-folder", str(image_dir), "--tokenizer", str(saved_tokenizer),
            "--tower", "llm2clip-eva02-l-14-336"]
    assert main([*base, "--projector-type", "pixel_shuffle2_mlp2x_gelu", "--json-out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["num_image_tokens"] == 144
    assert "144 tokens per image" in capsys.readouterr().out
    assert cli_main(["validate", *base, "--projector-type", "pixel_shuffle5_mlp2x_gelu"]) == 2
    assert "k=5 must divide the tower's 24x24 patch grid" in capsys.readouterr().err
