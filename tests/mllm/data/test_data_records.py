"""Record readers: JSON list and JSONL, lazy access, LLaVA's modality length estimate."""
import json

import pytest

from mllm.data.records import RecordError, RecordStore, estimate_length, image_paths

RECORDS = [
    {"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat sat."}]},
    {"id": 7, "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello"}]},
    {"id": "c", "image": ["x.jpg", "y.jpg"], "conversations": [{"from": "human", "value": "<image><image> 日本"}, {"from": "gpt", "value": "ok"}]},
]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_reads_both_formats_identically(tmp_path, fmt, write_records):
    store = RecordStore(write_records(tmp_path / f"d.{fmt}", RECORDS, fmt))
    assert store.format == fmt and len(store) == 3
    assert [store.record(i) for i in range(3)] == RECORDS
    assert [store.record_id(i) for i in range(3)] == ["a", "7", "c"]
    # LLaVA modality_lengths: word counts (split() words, markers included as LLaVA does), + with image, - text-only
    assert store.modality_lengths.tolist() == [7, -3, 3]


def test_jsonl_bad_lines_are_reported_per_record_with_line_numbers(tmp_path, write_records):
    path = write_records(tmp_path / "d.jsonl", [RECORDS[0], "{not json", "", RECORDS[1]], "jsonl")
    store = RecordStore(path)
    assert len(store) == 3  # blank lines are not records
    with pytest.raises(RecordError) as err:
        store.record(1)
    assert err.value.reason == "invalid_json"
    assert store.location(2) == f"{path}:4"
    assert store.record_id(1) is None and store.modality_lengths[1] == -1


def test_limit_and_whole_file_errors(tmp_path, write_records):
    store = RecordStore(write_records(tmp_path / "d.json", RECORDS), limit=2)
    assert len(store) == 2 and store.record(1) == RECORDS[1]
    (tmp_path / "obj.json").write_text(json.dumps({"data": RECORDS}))
    with pytest.raises(ValueError, match="list of records"):
        RecordStore(tmp_path / "obj.json")
    with pytest.raises(FileNotFoundError):
        RecordStore(tmp_path / "nope.json")


def test_records_are_not_kept_as_python_objects(tmp_path, write_records):
    store = RecordStore(write_records(tmp_path / "d.json", RECORDS * 100))
    assert store._buffer.dtype.name == "uint8" and len(store._offsets) == 301
    assert not any(isinstance(v, list) for v in vars(store).values())  # no per-record Python objects


def test_image_field_forms():
    assert image_paths({}) == [] and image_paths({"image": None}) == [] and image_paths({"image": []}) == []
    assert image_paths({"image": "a.jpg"}) == ["a.jpg"]
    assert image_paths({"image": ["a.jpg", "b.png"]}) == ["a.jpg", "b.png"]
    for bad in ({"image": 3}, {"image": ["a.jpg", None]}, {"image": ""}, {"image": {"path": "a"}}):
        with pytest.raises(RecordError) as err:
            image_paths(bad)
        assert err.value.reason == "malformed_record"
    assert estimate_length({"image": "a", "conversations": []}) == 1  # never zero
    assert estimate_length("junk") == -1
