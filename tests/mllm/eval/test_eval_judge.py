"""GPT-judged benchmarks against a local OpenAI-compatible HTTP server: exact requests, LLaVA's and MM-Vet's
reply parsing and retry rules, caching, and judging off when nothing is configured."""
import http.server
import json
import threading

import pytest

from mllm.eval import JudgeConfig, JudgeError, load_benchmark
from mllm.eval.suites.llava_bench import RULE_PROMPT, parse_score, summarize
from mllm.eval.suites.mmvet import GRADER_PROMPT


class FakeJudge:
    """Records request bodies; ``reply(body) -> content`` decides the answer; ``status`` forces an HTTP error."""

    def __init__(self, reply, status=200):
        self.requests, self.reply, self.status = [], reply, status
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                data = json.dumps({"model": body["model"] + "-served",
                                   "choices": [{"message": {"content": outer.reply(body)}}]}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge_server():
    servers = []

    def make(reply, status=200):
        servers.append(FakeJudge(reply, status))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _llava_bench(root):
    root.mkdir()
    qs = [{"question_id": i, "image": "001.jpg", "text": f"Question {i}?", "category": c}
          for i, c in enumerate(["conv", "detail", "complex"])]
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    (root / "context.jsonl").write_text(json.dumps({"image": "001.jpg", "caption": ["A cat.", "On a mat."]}) + "\n")
    (root / "answers_gpt4.jsonl").write_text("".join(json.dumps({"question_id": i, "text": f"Ref {i}."}) + "\n"
                                                     for i in range(3)))
    return root


def test_llava_bench_judge_requests_and_scores(tmp_path, judge_server):
    replies = {"Question 0?": "8 9\nreason", "Question 1?": "6,3\nreason", "Question 2?": "Assistant 1: 7"}
    server = judge_server(lambda b: next(v for k, v in replies.items() if k in b["messages"][1]["content"]))
    bench = load_benchmark("llavabench", _llava_bench(tmp_path / "lb"),
                           judge=JudgeConfig(base_url=server.url, api_key="sk-test", retry_wait=0))
    items = bench.load()
    assert items[0].prompt == "<image>\nQuestion 0?" and items[0].max_new_tokens == 1024
    res = bench.score(items, {"0": "Mine 0.", "1": "Mine 1.", "2": "Mine 2."})
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert (req["model"], req["temperature"], req["max_tokens"]) == ("gpt-4-0314", 0.2, 1024)
    assert req["messages"][0] == {"role": "system", "content": "You are a helpful and precise assistant for "
                                                               "checking the quality of the answer."}
    assert req["messages"][1]["content"] == (
        "[Context]\nA cat.\nOn a mat.\n\n[Question]\nQuestion 0?\n\n[Assistant 1]\nRef 0.\n\n[End of Assistant 1]\n\n"
        "[Assistant 2]\nMine 0.\n\n[End of Assistant 2]\n\n[System]\n" + RULE_PROMPT + "\n\n")
    assert [res.per_sample[q]["tuple"] for q in "012"] == [[8.0, 9.0], [6.0, 3.0], [-1, -1]]
    # summarize_gpt_review.py: means over tuples (the [-1, -1] failure included), rounded to 3 decimals
    assert res.metrics["categories"]["all"] == {"relative": 84.6, "reference_score": 43.3, "model_score": 36.7, "n": 3}
    assert res.metrics["relative"] == 84.6 and res.metrics["categories"]["llava_bench_conv"]["relative"] == 112.5
    assert any("unparsable" in n for n in res.metrics["notes"])
    (answers,) = bench.write_submission(items, {"0": "Mine 0."}, tmp_path)
    first = json.loads(answers.read_text().splitlines()[0])
    assert first["question_id"] == 0 and first["text"] == "Mine 0." and "answer_id" in first


def test_parse_score_and_summarize_quirks():
    assert parse_score("8 9") == [8.0, 9.0] and parse_score("8,9\nx") == [8.0, 9.0]
    assert parse_score("8  9") == [-1, -1] and parse_score("8 9 10") == [-1, -1] and parse_score("") == [-1, -1]
    assert summarize([[0, 5], [0, 6]])["relative"] is None  # LLaVA's script divides by zero here


def test_judging_off_without_configuration(tmp_path, monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    assert JudgeConfig.from_env() is None
    bench = load_benchmark("llavabench", _llava_bench(tmp_path / "lb"), judge=JudgeConfig.from_env())
    res = bench.score(bench.load(), {"0": "a"})
    assert res.main is None and res.metrics["judged"] is False
    assert any("not configured" in n for n in res.metrics["notes"])
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:1/v1")
    monkeypatch.setenv("MLLM_JUDGE_MODEL", "local-judge")
    cfg = JudgeConfig.from_env()
    assert cfg.base_url == "http://localhost:1/v1" and cfg.api_key is None and cfg.model == "local-judge"


def _mmvet(root, n=3):
    (root / "images").mkdir(parents=True)
    meta = {f"v1_{i}": {"imagename": f"v1_{i}.png", "question": f"What is {i}?", "answer": "2<AND>3",
                        "capability": ["math", "ocr"] if i % 2 else ["ocr"]} for i in range(n)}
    (root / "mm-vet.json").write_text(json.dumps(meta))
    return root


def test_mmvet_grader_requests_retries_and_scores(tmp_path, judge_server):
    def reply(body):
        text = body["messages"][0]["content"]
        if "What is 0?" in text:
            return "0.5"
        if "What is 1?" in text:  # unparsable first answer, then a valid digit on the first retry
            return "1.0" if text.endswith("(digit): ") else "great"
        return "no idea"  # never parsable: five retries, then 0.0

    server = judge_server(reply)
    bench = load_benchmark("mmvet", _mmvet(tmp_path / "mmvet"), judge=JudgeConfig(base_url=server.url, retry_wait=0))
    items = bench.load()
    assert items[1].prompt == "<image>\nWhat is 1?"
    res = bench.score(items, {"v1_0": "x = 2", "v1_1": "3", "v1_2": "?"})
    first = server.requests[0]
    assert (first["model"], first["max_tokens"], first["temperature"]) == ("gpt-4-0613", 3, 0.0)
    assert first["messages"] == [{"role": "user", "content": GRADER_PROMPT + "\nWhat is 0? | 2 <AND> 3 | x = 2 | "}]
    temps = [r["temperature"] for r in server.requests if "What is 2?" in r["messages"][0]["content"]]
    assert temps == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]  # mm-vet_evaluator.py's retry schedule
    assert [res.per_sample[k]["score"] for k in ("v1_0", "v1_1", "v1_2")] == [0.5, 1.0, 0.0]
    assert res.metrics["total"] == pytest.approx(50.0) and res.metrics["per_capability"] == {
        "math": pytest.approx(100.0), "ocr": pytest.approx(50.0)}
    (results,) = bench.write_submission(items, {"v1_0": "x = 2"}, tmp_path)
    assert json.loads(results.read_text()) == {"v1_0": "x = 2", "v1_1": "", "v1_2": ""}


def test_judge_cache_and_errors(tmp_path, judge_server):
    server = judge_server(lambda b: "0.5")
    cfg = JudgeConfig(base_url=server.url, retry_wait=0, cache_path=str(tmp_path / "cache.jsonl"))
    bench = load_benchmark("mmvet", _mmvet(tmp_path / "mmvet", n=2), judge=cfg, num_runs=2)
    items = bench.load()
    first = bench.score(items, {"v1_0": "a", "v1_1": "b"})
    assert len(server.requests) == 4 and first.metrics["runs"] == [50.0, 50.0]
    again = bench.score(items, {"v1_0": "a", "v1_1": "b"})  # every reply comes from the cache file
    assert len(server.requests) == 4 and again.metrics == first.metrics
    bad = judge_server(lambda b: "x", status=400)
    bench = load_benchmark("mmvet", tmp_path / "mmvet", judge=JudgeConfig(base_url=bad.url, retry_wait=0))
    with pytest.raises(JudgeError, match="HTTP 400"):
        bench.score(items, {"v1_0": "other answer"})
    assert len(bad.requests) == 1  # a client error is not retried
