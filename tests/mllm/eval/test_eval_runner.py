"""The runner: resume without recomputation, batched == bs=1, worker-side images, skips, cache refusal."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from mllm.eval import runner
from mllm.eval.cache import CacheMismatchError
from mllm.eval.runner import EvalConfig, ImageItemDataset, budget_batches, run_eval
from mllm.generation import GenerationSettings, generate_text


class Interrupt(Exception):
    pass


def _counting_generate(calls, fail_on_call=None):
    """A generate_text that records the question prompts it answers and can 'crash' on a given call."""
    def wrapped(model, processor, convs, images, settings):
        if fail_on_call is not None and len(calls) + 1 == fail_on_call:
            raise Interrupt("simulated kill")
        calls.append([c[0]["value"] for c in convs])
        return generate_text(model, processor, convs, images, settings)
    return wrapped


def _config(bench, ckpt, out, **kw):
    kw.setdefault("num_workers", 0)
    return EvalConfig(benchmark=bench.name, data=str(bench.data), model=str(ckpt), options=dict(bench.options),
                      output_dir=str(out), progress=False, max_new_tokens=kw.pop("max_new_tokens", 4), **kw)


def test_interrupted_run_resumes_without_recomputing(synthetic_bench, tiny_checkpoint, loaded_checkpoint, tmp_path,
                                                     monkeypatch):
    model, processor = loaded_checkpoint
    pope = synthetic_bench["pope"]
    reference = run_eval(_config(pope, tiny_checkpoint, tmp_path / "ref", batch_size=3), model, processor)

    calls = []
    monkeypatch.setattr(runner, "generate_text", _counting_generate(calls, fail_on_call=3))
    cfg = _config(pope, tiny_checkpoint, tmp_path / "run", batch_size=3, num_workers=1)
    with pytest.raises(Interrupt):
        run_eval(cfg, model, processor)
    done = [p for batch in calls for p in batch]
    assert len(done) == 6  # two batches of 3 finished and were cached before the "kill"
    cached = (tmp_path / "run" / "cache.jsonl").read_text().splitlines()
    assert len(cached) == 1 + 6 and json.loads(cached[0])["benchmark"] == "pope"

    calls.clear()
    monkeypatch.setattr(runner, "generate_text", _counting_generate(calls))
    resumed = run_eval(cfg, model, processor)
    redone = [p for batch in calls for p in batch]
    assert len(redone) == 6 and resumed.generated == 6 and resumed.metrics["timing"]["reused_from_cache"] == 6
    assert resumed.predictions == reference.predictions
    assert resumed.metrics["main"] == reference.metrics["main"]

    # everything cached: scoring again never loads (or calls) the model
    calls.clear()
    monkeypatch.setattr("mllm.serialization.load_model", lambda *a, **k: pytest.fail("model loaded"))
    again = run_eval(cfg)
    assert calls == [] and again.generated == 0 and again.predictions == reference.predictions


def test_batched_equals_batch_size_one(synthetic_bench, tiny_checkpoint, loaded_checkpoint, tmp_path):
    model, processor = loaded_checkpoint
    vqa = synthetic_bench["vqav2"]
    one = run_eval(_config(vqa, tiny_checkpoint, tmp_path / "bs1", batch_size=1, max_new_tokens=6), model, processor)
    many = run_eval(_config(vqa, tiny_checkpoint, tmp_path / "bs7", batch_size=7, max_new_tokens=6, num_workers=2),
                    model, processor)
    assert len(one.predictions) == 18 and one.predictions == many.predictions
    assert len(set(one.predictions.values())) > 1  # the images/questions actually change the answers
    # ... and both equal generate_text on the original files, without the runner's worker-side resizing
    items = vqa.build().load()[:4]
    direct = [generate_text(model, processor, [[{"from": "human", "value": it.prompt}]], [[it.images[0]]],
                            GenerationSettings(max_new_tokens=6))[0] for it in items]
    assert direct == [one.predictions[it.question_id] for it in items]


@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
def test_worker_side_geometry_gives_identical_pixels(mode, loaded_checkpoint, synthetic_bench):
    processor = loaded_checkpoint[1].image_processor.with_image_aspect_ratio(mode)
    items = synthetic_bench["pope"].build().load()
    dataset = ImageItemDataset(items, processor)
    for i in range(0, len(items), 2):
        _, images, error = dataset[i]
        assert error is None and images[0].size == (processor.image_size,) * 2
        assert torch.equal(processor(images), processor([items[i].images[0]]))


def test_budget_batches_never_mix_token_budgets(synthetic_bench):
    import dataclasses

    items = synthetic_bench["vqav2"].build().load()[:7]
    items = [dataclasses.replace(it, max_new_tokens=4 if i % 3 else 9) for i, it in enumerate(items)]
    batches = budget_batches(items, 2)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len(b) <= 2 and len({items[i].max_new_tokens for i in b}) == 1 for b in batches)


def test_unreadable_images_are_counted_skips(synthetic_bench, tiny_checkpoint, loaded_checkpoint, tmp_path):
    model, processor = loaded_checkpoint
    data = tmp_path / "pope"
    shutil.copytree(synthetic_bench["pope"].data, data)
    images = sorted((data / "val2014").iterdir())
    images[0].write_bytes(b"not a png at all")
    images[1].unlink()
    cfg = EvalConfig(benchmark="pope", data=str(data), model=str(tiny_checkpoint), output_dir=str(tmp_path / "out"),
                     batch_size=4, num_workers=1, max_new_tokens=3, progress=False)
    res = run_eval(cfg, model, processor)
    skipped = res.metrics["skipped"]
    assert skipped["count"] == 4 and skipped["by_reason"] == {"not_image": 2, "missing": 2}
    assert res.metrics["n"] == 12 and len(res.predictions) == 8
    assert any("4 items skipped for unreadable images" in n for n in res.metrics["metrics"]["notes"])
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    skipped_rows = [r for r in rows if "skipped" in r]
    assert len(skipped_rows) == 4 and all(r["prediction"] is None for r in skipped_rows)
    # scored as eval_pope.py scores a missing answer: it computes over the answers it is given
    assert res.metrics["metrics"]["splits"]["random"]["n"] == 8
    assert any("had no prediction and were left out" in n for n in res.metrics["metrics"]["notes"])

    # skips are not cached: once the image is back, a rerun answers exactly those items
    Image.new("RGB", (9, 9), "red").save(images[1])
    shutil.copyfile(images[2], images[0])
    again = run_eval(cfg, model, processor)
    assert again.generated == 4 and again.metrics["skipped"]["count"] == 0 and len(again.predictions) == 12


def test_cache_from_other_options_or_model_is_refused(synthetic_bench, tiny_checkpoint, loaded_checkpoint, tmp_path,
                                                      make_tiny_model):
    from mllm import save_pretrained

    model, processor = loaded_checkpoint
    pope = synthetic_bench["pope"]
    run_eval(_config(pope, tiny_checkpoint, tmp_path / "out", limit=4), model, processor)
    other_options = _config(pope, tiny_checkpoint, tmp_path / "out", limit=4)
    other_options.options = {"splits": ("random",)}
    with pytest.raises(CacheMismatchError, match=r"options\.splits: cached None, now \['random'\]"):
        run_eval(other_options, model, processor)
    with pytest.raises(CacheMismatchError, match=r"generation\.max_new_tokens: cached 4, now 5"):
        run_eval(_config(pope, tiny_checkpoint, tmp_path / "out", limit=4, max_new_tokens=5), model, processor)

    other_model, other_processor = make_tiny_model("llama")
    torch.nn.init.normal_(next(other_model.projector.parameters()))  # a different projector = a different checkpoint
    other_dir = save_pretrained(other_model, other_processor, tmp_path / "other-ckpt")
    with pytest.raises(CacheMismatchError, match=r"model\.sha256"):
        run_eval(_config(pope, other_dir, tmp_path / "out", limit=4), other_model, other_processor)
    res = run_eval(_config(pope, other_dir, tmp_path / "out", limit=4, overwrite=True), other_model, other_processor)
    assert res.generated == 4


def test_limit_and_bad_config(synthetic_bench, tiny_checkpoint, loaded_checkpoint, tmp_path):
    model, processor = loaded_checkpoint
    res = run_eval(_config(synthetic_bench["mme"], tiny_checkpoint, tmp_path / "mme", limit=4), model, processor)
    assert res.metrics["n"] == 4 and res.metrics["n_available"] == 12 and res.metrics["main_metric"] == "perception"
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        run_eval(_config(synthetic_bench["mme"], tiny_checkpoint, tmp_path / "x", batch_size=0), model, processor)


def _llava_bench(root):
    root.mkdir(parents=True)
    (root / "images").mkdir()
    Image.new("RGB", (30, 20), "teal").save(root / "images" / "001.jpg")
    qs = [{"question_id": i, "image": "001.jpg", "text": f"Describe {i}.", "category": c}
          for i, c in enumerate(["conv", "detail", "complex"])]
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    (root / "context.jsonl").write_text(json.dumps({"image": "001.jpg", "caption": ["A teal card."]}) + "\n")
    (root / "answers_gpt4.jsonl").write_text("".join(json.dumps({"question_id": i, "text": "Teal."}) + "\n"
                                                     for i in range(3)))
    return root


@pytest.fixture
def stub_judge():
    """A local OpenAI-compatible endpoint that always scores '8 6' and counts its requests."""
    import http.server
    import threading

    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"model": "stub", "choices": [{"message": {"content": "8 6\nfine"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1", requests
    server.shutdown()
    server.server_close()


def test_judged_benchmark_with_and_without_an_endpoint(tiny_checkpoint, loaded_checkpoint, tmp_path, monkeypatch,
                                                        stub_judge):
    model, processor = loaded_checkpoint
    data = _llava_bench(tmp_path / "lb")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "MLLM_JUDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    cfg = EvalConfig(benchmark="llavabench", data=str(data), model=str(tiny_checkpoint), max_new_tokens=3,
                     output_dir=str(tmp_path / "out"), num_workers=0, progress=False)
    res = run_eval(cfg, model, processor)
    assert res.metrics["main"] is None and any("judge not configured" in n for n in res.metrics["metrics"]["notes"])
    answers = [json.loads(line) for line in (tmp_path / "out" / "llavabench_answers.jsonl").read_text().splitlines()]
    assert [a["text"] for a in answers] == [res.predictions[str(i)] for i in range(3)]

    url, requests = stub_judge
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    judged = run_eval(cfg, model, processor)  # answers from the cache, reviews from the endpoint
    assert judged.generated == 0 and len(requests) == 3 and requests[0]["model"] == "gpt-4-0314"
    assert judged.metrics["main"] == pytest.approx(75.0)  # mean(6) / mean(8) * 100
    assert (tmp_path / "out" / "judge_cache.jsonl").exists()
    run_eval(cfg, model, processor)
    assert len(requests) == 3  # reviews come from the judge cache too


@pytest.mark.slow
def test_sigkilled_cli_run_resumes(synthetic_bench, tiny_checkpoint, loaded_checkpoint, tmp_path, monkeypatch):
    """A real kill -9 in the middle of a run: the rerun answers only what the cache does not hold."""
    import os
    import signal
    import subprocess
    import sys
    import time

    vqa = synthetic_bench["vqav2"]
    out = tmp_path / "out"
    argv = ["--model", str(tiny_checkpoint), "--benchmark", "vqav2", "--data", str(vqa.data), "--option",
            "split=val2014", "--output-dir", str(out), "--batch-size", "1", "--num-workers", "1",
            "--max-new-tokens", "8", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "mllm.cli", "eval", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    cache = out / "cache.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cache.exists() and len(cache.read_text().splitlines()) >= 4:  # header + 3 answers
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(cache.read_text().splitlines()) - 1
    assert 3 <= done < 18, f"the kill landed after {done} answers"

    calls = []
    monkeypatch.setattr(runner, "generate_text", _counting_generate(calls))
    model, processor = loaded_checkpoint
    cfg = EvalConfig(benchmark="vqav2", data=str(vqa.data), model=str(tiny_checkpoint), options={"split": "val2014"},
                     output_dir=str(out), batch_size=6, num_workers=0, max_new_tokens=8, progress=False)
    resumed = run_eval(cfg, model, processor)
    assert resumed.generated == 18 - done == sum(map(len, calls)) and len(resumed.predictions) == 18


def test_protocol_llava_decodes_one_by_one_with_llavas_settings(synthetic_bench, tiny_checkpoint, loaded_checkpoint,
                                                                tmp_path):
    model, processor = loaded_checkpoint
    vqa = synthetic_bench["vqav2"]
    batched = run_eval(_config(vqa, tiny_checkpoint, tmp_path / "b", batch_size=5, max_new_tokens=6), model, processor)
    llava = run_eval(_config(vqa, tiny_checkpoint, tmp_path / "l", protocol="llava", max_new_tokens=6), model,
                     processor)
    assert llava.predictions == batched.predictions  # batching never changes a greedy answer
    gen = llava.metrics["generation"]
    assert gen["protocol"] == "llava" and gen["batch_size"] == 1 and batched.metrics["generation"]["batch_size"] == 5
    notes = llava.metrics["metrics"]["notes"]
    assert any("protocol llava: batch size 1" in n for n in notes) and any("computes in fp32" in n for n in notes)
    with pytest.raises(ValueError, match="one question at a time; drop --batch-size 4"):
        run_eval(_config(vqa, tiny_checkpoint, tmp_path / "x", protocol="llava", batch_size=4), model, processor)


def test_protocol_resolution():
    from mllm.eval.runner import apply_protocol

    base = EvalConfig(benchmark="pope", data="d")
    cfg, notes = apply_protocol(base, "cuda:1")
    assert (cfg.batch_size, cfg.dtype) == (8, None) and notes == []
    cfg, notes = apply_protocol(EvalConfig(benchmark="pope", data="d", protocol="llava"), "cuda:1")
    assert (cfg.batch_size, cfg.dtype) == (1, "fp16") and "fp16" in notes[0]
    cfg, _ = apply_protocol(EvalConfig(benchmark="pope", data="d", protocol="llava", batch_size=1), "cpu")
    assert (cfg.batch_size, cfg.dtype) == (1, None)
    with pytest.raises(ValueError, match="runs in fp16"):
        apply_protocol(EvalConfig(benchmark="pope", data="d", protocol="llava", dtype="bf16"), "cuda")
    with pytest.raises(ValueError, match="protocol must be one of"):
        EvalConfig(benchmark="pope", data="d", protocol="fast").validate()
