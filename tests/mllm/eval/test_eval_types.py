"""EvalItem validation, the registry and option parsing, file helpers and the stdlib xlsx writer."""
import json
import xml.etree.ElementTree as ET
import zipfile

import pytest

from mllm.eval import (BENCHMARK_NAMES, BENCHMARKS, Benchmark, BenchmarkDataError, EvalItem, get_benchmark,
                       load_benchmark, parse_options)
from mllm.eval.io import is_missing, read_jsonl
from mllm.eval.xlsx import write_xlsx


def test_eval_item_contract():
    it = EvalItem("q1", "<image>\nWhat?", ("/a.png",), target={"answers": ["x"]})
    assert it.image == "/a.png" and it.max_new_tokens == 128 and it.to_dict()["target"] == {"answers": ["x"]}
    assert EvalItem("q2", "text only").image is None
    with pytest.raises(ValueError, match="1 <image> markers but 0 images"):
        EvalItem("q3", "<image>\nWhat?")
    with pytest.raises(ValueError, match="non-empty str"):
        EvalItem(3, "x")
    with pytest.raises(ValueError, match="max_new_tokens"):
        EvalItem("q4", "x", max_new_tokens=0)


def test_registry():
    assert BENCHMARK_NAMES == ("vqav2", "gqa", "vizwiz", "textvqa", "pope", "mme", "sqa", "mmbench", "mmbench_cn",
                               "seed", "llavabench", "mmvet")
    assert all(issubclass(c, Benchmark) and c.main_metric for c in BENCHMARKS.values())
    assert get_benchmark("MMBench-CN") is BENCHMARKS["mmbench_cn"]
    assert {n for n, c in BENCHMARKS.items() if c.server_side} == {"vqav2", "vizwiz", "mmbench", "mmbench_cn"}
    with pytest.raises(ValueError, match="unknown benchmark 'okvqa'"):
        get_benchmark("okvqa")
    with pytest.raises(ValueError, match=r"has no option\(s\) \['ocr'\]"):
        load_benchmark("textvqa", "/data", ocr=False)
    assert load_benchmark("textvqa", "/data", use_ocr=False).use_ocr is False


def test_parse_options():
    assert parse_options("textvqa", ["use_ocr=false", "image_dir=/x"]) == {"use_ocr": False, "image_dir": "/x"}
    assert parse_options("pope", ["splits=random, popular"]) == {"splits": ("random", "popular")}
    assert parse_options("mmvet", ["num_runs=5"]) == {"num_runs": 5}
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_options("pope", ["splits"])
    with pytest.raises(ValueError, match="use_ocr: expected a boolean"):
        parse_options("textvqa", ["use_ocr=maybe"])
    with pytest.raises(ValueError, match="has no option 'judge'"):
        parse_options("mmvet", ["judge=x"])


def test_io_helpers(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(BenchmarkDataError, match=r"a.jsonl:3: not valid JSON"):
        read_jsonl(tmp_path / "a.jsonl")
    with pytest.raises(BenchmarkDataError, match="missing file"):
        read_jsonl(tmp_path / "b.jsonl")
    assert is_missing("nan") and is_missing("None") and is_missing("") and is_missing(float("nan"))
    assert not is_missing("0") and not is_missing("none of these")


def test_xlsx_writer_round_trip(tmp_path):
    path = write_xlsx(tmp_path / "s.xlsx", ["index", "question", "prediction"],
                      [[1, "What <is> & this?", "A"], [1000002, "bad\x01char", None], [3, "中文", 2.5]])
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as z:
        assert {"[Content_Types].xml", "xl/workbook.xml", "xl/worksheets/sheet1.xml"} <= set(z.namelist())
        root = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
    rows = []
    for row in root.iter(f"{{{ns['m']}}}row"):
        cells = {}
        for c in row:
            t = c.find("m:is/m:t", ns)
            cells[c.get("r")[0]] = t.text if t is not None else float(c.find("m:v", ns).text)
        rows.append(cells)
    assert rows[0] == {"A": "index", "B": "question", "C": "prediction"}
    assert rows[1] == {"A": 1.0, "B": "What <is> & this?", "C": "A"}
    assert rows[2] == {"A": 1000002.0, "B": "badchar"} and rows[3]["B"] == "中文" and rows[3]["C"] == 2.5
    json.dumps(rows)
