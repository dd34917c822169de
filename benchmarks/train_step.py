"""Train-step and generation throughput of our model vs transformers' LlavaForConditionalGeneration.

Same tiny Llama LLM (weights copied), a tower of the same width/depth on each side (our EVA02 vs HF's CLIP),
mlp2x_gelu, same batch (one image + text per sample, answer tokens supervised). Each measurement runs in a
fresh subprocess (so peak memory is per model), ours and theirs alternate, medians are reported.
Writes benchmarks/results/train_step.json. Run: python benchmarks/train_step.py [--repeats 3] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# benchmarks/vision_tower.py would shadow the `vision_tower` package when this file runs as a script
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = dict(hidden=256, layers=4, heads=8, kv_heads=4, vocab=32000, tower_width=256, tower_depth=6, tower_heads=4,
             image=224, patch=14, batch=4, prompt_words=48, answer_words=24, new_tokens=128, gen_batch=8)


class PeakRSS:
    """Samples this process's resident memory every millisecond (CPU runs; CUDA uses the allocator stats)."""

    def __init__(self):
        self.peak = self.base = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _build_ours(workdir: Path, s: dict, device: str):
    import torch

    from mllm import TowerSpec, build_model
    from mllm.tiny import save_spm_tokenizer, save_tiny_tower

    tok_dir = workdir / "tok"
    if not tok_dir.exists():
        save_spm_tokenizer(tok_dir)
    tower_dir = workdir / "tower"
    if not tower_dir.exists():
        save_tiny_tower(tower_dir, seed=0, image_size=s["image"], patch_size=s["patch"], hidden_size=s["tower_width"],
                        num_layers=s["tower_depth"], num_heads=s["tower_heads"],
                        intermediate_size=int(s["tower_width"] * 8 / 3))
    from mllm.hub import load_tokenizer

    model, processor = build_model(str(workdir / "llm"), tower=TowerSpec(checkpoint=str(tower_dir), config=None, name="bench"),
                                   tokenizer=load_tokenizer(tok_dir), train_llm=True, dtype=torch.float32)
    return model.to(device), processor


def _build_theirs(workdir: Path, s: dict, device: str):
    import torch
    from transformers import AutoModelForCausalLM, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    llm = AutoModelForCausalLM.from_pretrained(str(workdir / "llm"), dtype=torch.float32, trust_remote_code=False)
    vision = CLIPVisionConfig(hidden_size=s["tower_width"], intermediate_size=int(s["tower_width"] * 8 / 3),
                              num_hidden_layers=s["tower_depth"], num_attention_heads=s["tower_heads"],
                              image_size=s["image"], patch_size=s["patch"])
    config = LlavaConfig(vision_config=vision, text_config=llm.config, image_token_id=31999,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    model.model.vision_tower.requires_grad_(False)
    return model.to(device)


def _inputs(s: dict, device: str, batch: int, with_labels: bool, image_token: int, left_pad: bool):
    import torch

    gen = torch.Generator().manual_seed(0)
    n_img = (s["image"] // s["patch"]) ** 2
    rows, labels = [], []
    for i in range(batch):
        prompt = torch.randint(3, 31000, (s["prompt_words"] + 3 * i,), generator=gen).tolist()
        answer = torch.randint(3, 31000, (s["answer_words"],), generator=gen).tolist() if with_labels else []
        ids = [1] + [image_token] * n_img + prompt + answer
        rows.append(ids)
        labels.append([-100] * (1 + n_img + len(prompt)) + answer)
    length = max(map(len, rows))
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    lab = torch.full((batch, length), -100, dtype=torch.long)
    for i, (ids, lb) in enumerate(zip(rows, labels)):
        sl = slice(length - len(ids), length) if left_pad else slice(0, len(ids))
        input_ids[i, sl] = torch.tensor(ids)
        mask[i, sl] = 1
        lab[i, sl] = torch.tensor(lb)
    pixels = torch.randn(batch, 3, s["image"], s["image"], generator=gen)
    return {k: v.to(device) for k, v in dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, labels=lab).items()}


def measure(which: str, task: str, workdir: Path, s: dict, device: str, steps: int) -> dict:
    """Runs inside a subprocess: build one model, time `steps` train steps or one generation call."""
    import torch

    torch.manual_seed(0)
    if which == "ours":
        model, processor = _build_ours(workdir, s, device)
        image_token = processor.image_token_id
    else:
        model = _build_theirs(workdir, s, device)
        image_token = 31999
    cuda = device.startswith("cuda")
    if task == "train":
        model.train()
        if which == "ours":
            model.vision_tower.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4)
        batch = _inputs(s, device, s["batch"], True, image_token, left_pad=False)
        tokens = int(batch["attention_mask"].sum())

        def step():
            out = model(**batch)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up (allocations, kernels)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        with PeakRSS() as mem:
            for _ in range(steps):
                t = time.perf_counter()
                step()
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() if cuda else mem.peak - mem.base
        return {"step_s": statistics.median(times), "tokens_per_s": tokens / statistics.median(times), "peak_bytes": peak}
    model.eval()
    batch = _inputs(s, device, s["gen_batch"], False, image_token, left_pad=True)
    batch.pop("labels")
    kwargs = dict(max_new_tokens=s["new_tokens"], min_new_tokens=s["new_tokens"], do_sample=False)
    with torch.no_grad():
        model.generate(**{k: v[:1] for k, v in batch.items()}, **kwargs)  # warm-up
        t = time.perf_counter()
        out = model.generate(**batch, **kwargs)
        elapsed = time.perf_counter() - t
        result = {"gen_s": elapsed, "gen_tokens_per_s": s["gen_batch"] * s["new_tokens"] / elapsed}
        if which == "ours":  # batched vs one-by-one, and identical tokens
            t = time.perf_counter()
            singles = []
            for i in range(s["gen_batch"]):
                row = {k: v[i:i + 1] for k, v in batch.items()}
                keep = row["attention_mask"][0].bool()
                row = {"input_ids": row["input_ids"][:, keep], "attention_mask": row["attention_mask"][:, keep],
                       "pixel_values": row["pixel_values"]}
                singles.append(model.generate(**row, **kwargs)[0].tolist())
            result["bs1_total_s"] = time.perf_counter() - t
            result["batched_equals_bs1"] = [r.tolist() for r in out] == singles
    return result


def _subprocess(which, task, workdir, s, device, steps) -> dict:
    cmd = [sys.executable, __file__, "--child", which, task, str(workdir), device, str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{which}/{task} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="alternating subprocess runs per side")
    parser.add_argument("--steps", type=int, default=5, help="timed train steps per run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS / "train_step.json"))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        which, task, workdir, device, steps = args.child
        print(json.dumps(measure(which, task, Path(workdir), SIZES, device, int(steps))))
        return 0

    import torch

    from mllm.tiny import save_tiny_llm

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        save_tiny_llm(workdir / "llm", "llama", hidden_size=SIZES["hidden"], num_layers=SIZES["layers"],
                      num_heads=SIZES["heads"], num_kv_heads=SIZES["kv_heads"], vocab_size=SIZES["vocab"])
        runs: dict[str, list[dict]] = {"ours_train": [], "theirs_train": [], "ours_gen": [], "theirs_gen": []}
        for r in range(args.repeats):
            for which in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
                runs[f"{which}_train"].append(_subprocess(which, "train", workdir, SIZES, args.device, args.steps))
                runs[f"{which}_gen"].append(_subprocess(which, "gen", workdir, SIZES, args.device, 0))
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)

    def med(key, field):
        return statistics.median(x[field] for x in runs[key])

    summary = {
        "train_tokens_per_s": {"ours": med("ours_train", "tokens_per_s"), "llava_hf": med("theirs_train", "tokens_per_s")},
        "train_peak_bytes": {"ours": med("ours_train", "peak_bytes"), "llava_hf": med("theirs_train", "peak_bytes")},
        "gen_tokens_per_s": {"ours": med("ours_gen", "gen_tokens_per_s"), "llava_hf": med("theirs_gen", "gen_tokens_per_s")},
        "batched_bs8_vs_8x_bs1_speedup": statistics.median(x["bs1_total_s"] / x["gen_s"] for x in runs["ours_gen"]),
        "batched_equals_bs1": all(x["batched_equals_bs1"] for x in runs["ours_gen"]),
    }
    summary["ratios"] = {
        "train_tokens_per_s": summary["train_tokens_per_s"]["ours"] / summary["train_tokens_per_s"]["llava_hf"],
        "train_peak_memory": summary["train_peak_bytes"]["ours"] / summary["train_peak_bytes"]["llava_hf"],
        "gen_tokens_per_s": summary["gen_tokens_per_s"]["ours"] / summary["gen_tokens_per_s"]["llava_hf"],
    }
    result = {
        "benchmark": "train_step", "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "sizes": SIZES, "repeats": args.repeats,
        "summary": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
