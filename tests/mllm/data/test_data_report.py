"""SkipReport: per-reason counts, each record once, merge across workers/ranks, readable summary."""
import json

from mllm.data.report import DataError, SkippedSample, SkipReport


def test_counts_dedupe_merge_and_summary():
    a = SkipReport(max_examples=2)
    a.add(SkippedSample(3, "r3", "missing", "no such file", "/img/3.jpg"))
    a.add([SkippedSample(3, "r3", "missing", "no such file", "/img/3.jpg"),  # same record drawn again
           SkippedSample(5, "r5", "mask_mismatch", "response 0 ...")])
    b = SkipReport()
    b.add([SkippedSample(9, None, "missing"), SkippedSample(11, "r11", "corrupt", "", "/img/11.jpg")])
    merged = SkipReport.merged([a.to_dict(), json.loads(json.dumps(b.to_dict()))])  # as gathered from ranks
    assert merged.counts == {"missing": 2, "mask_mismatch": 1, "corrupt": 1}
    assert merged.total == 4 and merged.occurrences["missing"] == 3
    text = merged.summary(num_samples=100)
    assert "skipped 4 samples of 100 (4.00%)" in text
    assert "record 3 (id='r3'): missing: no such file [/img/3.jpg]" in text
    assert "image file not found" in text
    assert SkipReport().summary(10) == "data: no samples skipped (of 10)"


def test_data_error_names_record_and_file():
    err = DataError(SkippedSample(12, "abc", "corrupt", "truncated", "/img/x.jpg"), "/data/train.json[12]")
    assert str(err) == "/data/train.json[12]: record 12 (id='abc'): corrupt: truncated [/img/x.jpg]"
