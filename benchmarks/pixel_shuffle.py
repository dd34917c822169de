"""576 vs 144 image tokens: `mlp2x_gelu` against `pixel_shuffle2_mlp2x_gelu` on the same model, in one run.

Stage-2 training as `finetune` runs it (LoRA r16 on every LLM linear + the projector, AdamW; fp32 LLM on the CPU,
4-bit needs no other code path) on image-heavy samples: one image, a 24-token prompt, an 8-token answer, batch
4, equal text length for both variants. Measured per variant: train-step time → samples/s and tokens/s, peak
memory (CPU: resident memory above the pre-step level, sampled every ms; CUDA: the allocator's peak) and the
bytes autograd saves for backward (exact, allocator-independent; parameters excluded); prefill (what `generate`
does before the first new token: tower, projector, LLM over the prompt) latency and the KV-cache bytes it
leaves, in all and for the image tokens.

Sizes: the tower is narrow (width 64, 2 blocks) but has the real 24×24 grid (336 px, patch 14); the LLM (Llama,
width 512, 4 layers, 32k vocabulary) is big enough that it dominates the step as in LLaVA-1.5-7B: the JSON
gives the share of linear-layer FLOPs in the LLM for this setting and for Vicuna-7B + EVA02-L-14-336 (both
above 97 %). Attention (quadratic in length, so cut more than 4x by the shorter sequence) is a larger share of
the LLM here than at 7B, because the sequence is long relative to the width; the JSON gives both shares, so
the small overstatement this causes can be judged. On a CPU the children use one thread each (`--threads`):
on a loaded machine a second thread mostly waits at barriers, adding noise, not speed.

Each measurement runs in a fresh subprocess (peak memory per variant); the variants alternate (A B, B A, ...)
so load changes on a shared machine hit both alike; best-of-N is reported next to the median, with the load
average before and after every run. Times are wall clock and, on the CPU, also the CPU time of the (single)
computing thread: on a machine shared with other jobs a step waits for the scheduler for a varying share of its
wall time, while its CPU time measures the work (the goals are judged on it there; on CUDA on wall time).
Writes benchmarks/results/pixel_shuffle.json.
Run: python benchmarks/pixel_shuffle.py [--repeats 5] [--device cuda]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/vision_tower.py would shadow the `vision_tower` package when this file runs as a script
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"mlp2x_gelu": "mlp2x_gelu", "pixel_shuffle2": "pixel_shuffle2_mlp2x_gelu"}
SIZES = dict(hidden=512, layers=4, heads=8, intermediate=1408, vocab=32000, tower_width=64, tower_depth=2,
             tower_heads=2, image=336, patch=14, batch=4, prompt_tokens=24, answer_tokens=8, lora_r=16,
             prefill_batch=1)
# the real shape the sizes stand in for: Vicuna-7B (32 x (4 x 4096^2 + 3 x 4096 x 11008) linear weights) and
# EVA02-L-14-336 (24 blocks; attention 4 x 1024^2, SwiGLU 3 x 1024 x 2730 per block), 577 tower tokens
REAL_7B = dict(llm_linear_params=32 * (4 * 4096 ** 2 + 3 * 4096 * 11008), tower_linear_params=24 * (
    4 * 1024 ** 2 + 3 * 1024 * 2730), tower_tokens=577)


def _peak_rss_class():
    """benchmarks/train_step.py's resident-memory sampler (one implementation for both benchmarks)."""
    spec = importlib.util.spec_from_file_location("_train_step_bench", Path(__file__).with_name("train_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PeakRSS


class SavedTensorBytes:
    """Bytes of the distinct non-parameter tensors autograd saves for backward (the activation memory)."""

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[tuple, int] = {}

    def _pack(self, tensor):
        ptr = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else 0
        if ptr not in self.params:
            self.seen[(ptr, tensor.untyped_storage().nbytes())] = tensor.untyped_storage().nbytes()
        return tensor

    def __enter__(self):
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def _linear_params(module) -> int:
    from torch import nn

    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def _build(workdir: Path, projector_type: str, device: str):
    import torch
    from transformers import AutoTokenizer

    from mllm import LoraSpec, ModelSpec, TowerSpec, build_model

    spec = ModelSpec(llm=str(workdir / "llm"), tower=TowerSpec(checkpoint=str(workdir / "tower"), config=None,
                                                               name="bench-24x24"),
                     projector_type=projector_type, lora=LoraSpec(r=SIZES["lora_r"], alpha=2 * SIZES["lora_r"],
                                                                  dropout=0.0))
    model, processor = build_model(spec, tokenizer=AutoTokenizer.from_pretrained(str(workdir / "tok")),
                                   dtype=torch.float32)
    return model.to(device), processor


def _batch(processor, rows: int, with_answer: bool, device: str) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    n_img, s = processor.num_image_tokens, SIZES
    text = s["prompt_tokens"] + (s["answer_tokens"] if with_answer else 0)
    input_ids = torch.cat([torch.ones(rows, 1, dtype=torch.long),  # BOS
                           torch.full((rows, n_img), processor.image_token_id),
                           torch.randint(100, 30000, (rows, text), generator=gen)], dim=1)
    labels = torch.full_like(input_ids, -100)
    if with_answer:
        labels[:, -s["answer_tokens"]:] = input_ids[:, -s["answer_tokens"]:]
    pixels = torch.randn(rows, 3, s["image"], s["image"], generator=gen)
    batch = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixels, labels=labels)
    return {k: v.to(device) for k, v in batch.items()}


def measure(projector_type: str, workdir: Path, device: str, steps: int, prefills: int, threads: int) -> dict:
    """Inside a subprocess: build one variant, time `steps` train steps and `prefills` prefills."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, processor = _build(workdir, projector_type, device)
    model.train()
    model.vision_tower.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = _batch(processor, SIZES["batch"], True, device)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with SavedTensorBytes(model) as saved:  # one forward's saved activations (no backward: just the count)
        model(**batch)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    with _peak_rss_class()() as rss:  # the first step (optimizer state allocated) counts towards the peak
        step()
        for _ in range(steps):
            sync()
            start, cpu_start = time.perf_counter(), time.thread_time()
            step()
            sync()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.thread_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated() if cuda else rss.peak - rss.base
    rows, tokens = SIZES["batch"], int(batch["attention_mask"].sum())

    model.eval()
    prompt = _batch(processor, SIZES["prefill_batch"], False, device)
    prompt.pop("labels")
    prefill_times, prefill_cpu, cache = [], [], None
    with torch.no_grad():
        for i in range(prefills + 1):  # the first is a warm-up
            sync()
            start, cpu_start = time.perf_counter(), time.thread_time()
            out = model.generate(**prompt, max_new_tokens=1, return_dict_in_generate=True)
            sync()
            if i:
                prefill_times.append(time.perf_counter() - start)
                prefill_cpu.append(time.thread_time() - cpu_start)
            cache = out.past_key_values
    kv_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    cached = cache.get_seq_length()
    return {
        "projector_type": projector_type, "image_tokens": processor.num_image_tokens, "rows": rows,
        "tokens_per_row": tokens // rows, "step_s": times, "step_cpu_s": cpu_times, "peak_bytes": peak, "peak_kind":
        "cuda max_memory_allocated" if cuda else "resident memory above the pre-step level",
        "saved_activation_bytes": saved.total, "prefill_s": prefill_times, "prefill_cpu_s": prefill_cpu,
        "prefill_tokens": int(prompt["input_ids"].shape[1]),
        "kv_cache_bytes": kv_bytes, "kv_cached_tokens": cached,
        "kv_image_bytes": kv_bytes // cached * processor.num_image_tokens * SIZES["prefill_batch"],
        "linear_params": {"tower": _linear_params(model.vision_tower),
                          "tower_tokens": model.vision_tower.num_patches + model.vision_tower.num_prefix_tokens},
    }


def _child(projector_type: str, workdir: Path, device: str, steps: int, prefills: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", projector_type, str(workdir), device, str(steps), str(prefills),
           str(threads)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{projector_type} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def _prepare(workdir: Path) -> None:
    from mllm.tiny import save_spm_tokenizer, save_tiny_llm, save_tiny_tower

    s = SIZES
    save_spm_tokenizer(workdir / "tok")
    save_tiny_llm(workdir / "llm", "llama", hidden_size=s["hidden"], num_layers=s["layers"], num_heads=s["heads"],
                  num_kv_heads=s["heads"], intermediate_size=s["intermediate"], vocab_size=s["vocab"])
    save_tiny_tower(workdir / "tower", image_size=s["image"], patch_size=s["patch"], hidden_size=s["tower_width"],
                    num_layers=s["tower_depth"], num_heads=s["tower_heads"],
                    intermediate_size=int(s["tower_width"] * 8 / 3))


def _llm_share(llm_params: int, tokens: int, tower_params: int, tower_tokens: int) -> float:
    """Linear FLOPs of a LoRA step: frozen LLM 4·N·T (forward + input gradients), frozen tower 2·N·T (forward)."""
    llm, tower = 4 * llm_params * tokens, 2 * tower_params * tower_tokens
    return llm / (llm + tower)


def _attention_share(width: int, layer_linear_params: int, tokens: int) -> float:
    """Causal attention's share of an LLM layer's forward FLOPs: 2·T²·d (QKᵀ and AV over the kept half) against
    2·N·T for its linears."""
    attention = 2 * tokens * tokens * width
    return attention / (attention + 2 * layer_linear_params * tokens)


def summarise(runs: dict[str, list[dict]], clock: str) -> dict:
    """Per variant: best and median over every timed step/prefill of every run; ratios pixel shuffle vs mlp.
    `clock` is the time the goals are judged on: "cpu" (thread CPU time) or "wall"."""
    def stats(values):
        return {"best": min(values), "median": statistics.median(values)}

    out = {}
    for name, rs in runs.items():
        rows, tokens = rs[0]["rows"], rs[0]["rows"] * rs[0]["tokens_per_row"]
        entry = {"image_tokens": rs[0]["image_tokens"], "tokens_per_sample": rs[0]["tokens_per_row"]}
        for label, key in (("wall", "step_s"), ("cpu", "step_cpu_s")):
            step = stats([t for r in rs for t in r[key]])
            entry[f"step_{label}_s"] = step
            entry[f"samples_per_s_{label}"] = {k: rows / v for k, v in step.items()}
            entry[f"tokens_per_s_{label}"] = {k: tokens / v for k, v in step.items()}
        entry.update({
            "peak_bytes": stats([r["peak_bytes"] for r in rs]),
            "saved_activation_bytes": rs[0]["saved_activation_bytes"],
            "prefill_wall_s": stats([t for r in rs for t in r["prefill_s"]]),
            "prefill_cpu_s": stats([t for r in rs for t in r["prefill_cpu_s"]]),
            "prefill_tokens": rs[0]["prefill_tokens"],
            "kv_cache_bytes": rs[0]["kv_cache_bytes"], "kv_image_bytes": rs[0]["kv_image_bytes"],
        })
        out[name] = entry
    a, b = out["mlp2x_gelu"], out["pixel_shuffle2"]
    both = ("best", "median")
    ratios = {
        **{f"train_samples_per_s_{c}": {k: b[f"samples_per_s_{c}"][k] / a[f"samples_per_s_{c}"][k] for k in both}
           for c in ("cpu", "wall")},
        **{f"train_tokens_per_s_{c}": {k: b[f"tokens_per_s_{c}"][k] / a[f"tokens_per_s_{c}"][k] for k in both}
           for c in ("cpu", "wall")},
        **{f"prefill_speedup_{c}": {k: a[f"prefill_{c}_s"][k] / b[f"prefill_{c}_s"][k] for k in both}
           for c in ("cpu", "wall")},
        "train_peak_memory_reduction": {k: a["peak_bytes"][k] / b["peak_bytes"][k] for k in both},
        "saved_activation_reduction": a["saved_activation_bytes"] / b["saved_activation_bytes"],
        "kv_cache_reduction_image": a["kv_image_bytes"] / b["kv_image_bytes"],
        "kv_cache_reduction_prompt": a["kv_cache_bytes"] / b["kv_cache_bytes"],
    }
    throughput = ratios[f"train_samples_per_s_{clock}"]
    goals = {"judged_on": f"{clock} time, median",
             "train_throughput_x": {"goal": 2.5, "measured_median": throughput["median"],
                                    "measured_best": throughput["best"], "met": throughput["median"] >= 2.5},
             "image_kv_cache_reduction_x": {"goal": 3.0, "measured": ratios["kv_cache_reduction_image"],
                                            "met": ratios["kv_cache_reduction_image"] >= 3.0}}
    return {"variants": out, "ratios_pixel_shuffle_vs_mlp": ratios, "goals": goals}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="subprocess runs per variant, alternating")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps per run (after one untimed)")
    parser.add_argument("--prefills", type=int, default=5, help="timed prefills per run (after one untimed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per measurement (default: 1 on the CPU, torch's own on CUDA)")
    parser.add_argument("--out", default=str(RESULTS / "pixel_shuffle.json"))
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, workdir, device, steps, prefills, threads = args.child
        print(json.dumps(measure(kind, Path(workdir), device, int(steps), int(prefills), int(threads))))
        return 0
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)

    import torch

    started, load_start = time.time(), os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        _prepare(workdir)
        for r in range(args.repeats):
            order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
            for name in order:
                runs[name].append(_child(VARIANTS[name], workdir, args.device, args.steps, args.prefills, threads))
                last = runs[name][-1]
                print(f"repeat {r + 1}/{args.repeats} {name}: step {statistics.median(last['step_s']):.2f} s "
                      f"(cpu {statistics.median(last['step_cpu_s']):.2f} s), prefill "
                      f"{statistics.median(last['prefill_s']):.3f} s, load {last['loadavg_1min']}",
                      file=sys.stderr, flush=True)
    summary = summarise(runs, "cpu" if args.device == "cpu" and threads == 1 else "wall")
    p = runs["mlp2x_gelu"][0]["linear_params"]
    tokens_576 = summary["variants"]["mlp2x_gelu"]["tokens_per_sample"]
    layer = 4 * SIZES["hidden"] ** 2 + 3 * SIZES["hidden"] * SIZES["intermediate"]  # linear weights per layer
    summary["llm_share_of_linear_flops"] = {  # decoder linears (lm_head runs on the few labelled positions only)
        "this_benchmark": _llm_share(SIZES["layers"] * layer, tokens_576, p["tower"], p["tower_tokens"]),
        "vicuna7b_eva02_l_336": _llm_share(REAL_7B["llm_linear_params"], tokens_576, REAL_7B["tower_linear_params"],
                                           REAL_7B["tower_tokens"]),
    }
    summary["attention_share_of_llm_forward_at_576_image_tokens"] = {
        "this_benchmark": _attention_share(SIZES["hidden"], layer, tokens_576),
        "vicuna7b": _attention_share(4096, REAL_7B["llm_linear_params"] // 32, tokens_576),
    }
    result = {
        "benchmark": "pixel_shuffle", "device": args.device, "torch": torch.__version__,
        "threads_per_measurement": threads or torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "loadavg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()],
                    "note": "1/5/15-minute load averages; the machine is shared, so runs alternate and best-of-N "
                            "is reported next to the median"},
        "wall_s": round(time.time() - started, 1), "sizes": SIZES, "repeats": args.repeats, "steps": args.steps,
        "summary": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("ratios_pixel_shuffle_vs_mlp", "goals", "llm_share_of_linear_flops")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
