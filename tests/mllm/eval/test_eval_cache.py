"""The prediction cache on its own: header checks, half-written lines, stale items, model fingerprints."""
from __future__ import annotations

import json

import pytest

from mllm.eval.cache import CacheMismatchError, PredictionCache, model_fingerprint
from mllm.eval.types import EvalItem

HEADER = {"benchmark": "pope", "options": {"splits": ("random",)}, "model": {"sha256": "abc"}}


def _items(n=5):
    return [EvalItem(question_id=f"q{i}", prompt=f"<image>\nquestion {i}", images=(f"/img/{i}.png",)) for i in range(n)]


def test_round_trip_and_header_refusal(tmp_path):
    path = tmp_path / "cache.jsonl"
    items = _items()
    with PredictionCache(path, HEADER) as cache:
        cache.append([(items[0], "yes"), (items[1], "No, there is not.")])
        cache.append([(items[2], "")])
    with PredictionCache(path, HEADER) as cache:  # tuples in the header compare equal to the JSON lists
        found, stale = cache.lookup(items)
    assert found == {"q0": "yes", "q1": "No, there is not.", "q2": ""} and stale == 0

    changed = {**HEADER, "options": {"splits": ("popular",)}}
    with pytest.raises(CacheMismatchError, match=r"options\.splits: cached \['random'\], now \['popular'\]"):
        PredictionCache(path, changed)
    with PredictionCache(path, changed, overwrite=True) as cache:
        assert cache.lookup(items) == ({}, 0)
    assert json.loads(path.read_text().splitlines()[0])["options"] == {"splits": ["popular"]}


def test_half_written_last_line_is_dropped_and_appending_continues(tmp_path):
    path = tmp_path / "cache.jsonl"
    items = _items()
    with PredictionCache(path, HEADER) as cache:
        cache.append([(items[0], "a"), (items[1], "b")])
    text = path.read_text()
    path.write_text(text[:-9])  # killed in the middle of writing q1's line
    with PredictionCache(path, HEADER) as cache:
        assert cache.dropped_partial_line and cache.lookup(items)[0] == {"q0": "a"}
        cache.append([(items[1], "b2")])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["answer"] for line in lines[1:]] == ["a", "b2"]

    # a whole last record whose newline was never written is kept, and the next record starts a new line
    path.write_text(path.read_text().rstrip("\n"))
    with PredictionCache(path, HEADER) as cache:
        assert not cache.dropped_partial_line and set(cache.lookup(items)[0]) == {"q0", "q1"}
        cache.append([(items[2], "c")])
    assert [json.loads(line)["answer"] for line in path.read_text().splitlines()[1:]] == ["a", "b2", "c"]


def test_damage_before_the_last_line_is_an_error(tmp_path):
    path = tmp_path / "cache.jsonl"
    with PredictionCache(path, HEADER) as cache:
        cache.append([(it, "x") for it in _items(3)])
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = '{"question_id": "q1", "ans\n'
    path.write_text("".join(lines))
    with pytest.raises(CacheMismatchError, match=r"cache.jsonl:3 is damaged"):
        PredictionCache(path, HEADER)
    path.write_text('{"question_id": "q0", "answer": "x"}\n')
    with pytest.raises(CacheMismatchError, match="not a prediction cache"):
        PredictionCache(path, HEADER)


def test_empty_or_header_only_fragment_starts_fresh(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text("")
    with PredictionCache(path, HEADER) as cache:
        cache.append([(_items(1)[0], "y")])
    path.write_text('{"format": "llm2clip-ll')  # killed while writing the header
    with PredictionCache(path, HEADER) as cache:
        assert cache.lookup(_items()) == ({}, 0)
        cache.append([(_items(1)[0], "z")])
    assert json.loads(path.read_text().splitlines()[0])["benchmark"] == "pope"


def test_changed_item_is_recomputed(tmp_path):
    import dataclasses

    path = tmp_path / "cache.jsonl"
    items = _items(3)
    with PredictionCache(path, HEADER) as cache:
        cache.append([(it, "x") for it in items])
    changed = [items[0], dataclasses.replace(items[1], prompt="<image>\nother"),
               dataclasses.replace(items[2], max_new_tokens=7)]
    with PredictionCache(path, HEADER) as cache:
        assert cache.lookup(changed) == ({"q0": "x"}, 2)


def test_model_fingerprint_sees_listed_parts_only(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "projector").mkdir(parents=True)
    (ckpt / "projector" / "w.safetensors").write_bytes(b"\0" * (3 << 20))
    (ckpt / "config.json").write_text(json.dumps({"llm": "base", "tower": {"name": "eva"},
                                                  "contents": {"projector": "projector"}}))
    first = model_fingerprint(ckpt)
    (ckpt / "eval").mkdir()
    (ckpt / "eval" / "cache.jsonl").write_text("results written inside the checkpoint")
    assert model_fingerprint(ckpt) == first and first["tower"] == "eva" and first["llm"] == "base"
    data = bytearray((ckpt / "projector" / "w.safetensors").read_bytes())
    data[-5] = 1  # a change near the end of a large file
    (ckpt / "projector" / "w.safetensors").write_bytes(bytes(data))
    assert model_fingerprint(ckpt)["sha256"] != first["sha256"]
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        model_fingerprint(tmp_path)
