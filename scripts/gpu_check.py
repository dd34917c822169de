"""GPU check: the real model at full size on one H100/H200, in one short call (< 6 minutes).

Builds a full-size LLM2CLIP EVA02-L-14-336 tower and a 7B-shaped Llama (random weights; no downloads),
then measures, through the project's own `build_model`:
  * stage 2: QLoRA (4-bit NF4 LLM, LoRA r128 on all linears, gradient checkpointing) at micro-batch 4 × ~800
    tokens (576 image + text) — tokens/s, MFU with model FLOPs 4·N·T (frozen/LoRA LLM: forward 2NT + input-grad
    backward 2NT) plus the tower's forward, peak GPU memory;
  * stage 1: projector-only steps with the LLM in bf16 — tokens/s, peak memory;
  * the tower alone in bf16 — images/s.
Writes JSON (default benchmarks/results/gpu_check_<gpu>.json, and $OUT/gpu_check.json when $OUT is set).
`--tiny` runs the same code path at toy size on the CPU (CI keeps this script working).

On the lent device: bitsandbytes must travel as a wheel (see README "GPU check").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mllm import LoraSpec, TowerSpec, build_model  # noqa: E402
from mllm.tiny import tiny_llm_config, tiny_tower_config  # noqa: E402

PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16 tensor-core peaks


def _peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _save_random_llm(path: Path, tiny: bool, device) -> int:
    from transformers import AutoModelForCausalLM, LlamaConfig

    if tiny:
        config = tiny_llm_config("llama")
    else:  # Llama-2-7B / Vicuna-7B shape
        config = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(path), safe_serialization=True, max_shard_size="5GB")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return n_params


def _save_random_tower(path: Path, tiny: bool) -> tuple[int, object]:
    from vision_tower import build_vision_tower

    tower = build_vision_tower(tiny_tower_config() if tiny else "llm2clip-eva02-l-14-336")
    n = sum(p.numel() for p in tower.parameters())
    tower.to(torch.bfloat16).save_pretrained(path)
    return n, tower.config


def _batch(processor, micro: int, text_tokens: int, image_size: int, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n_img = processor.num_image_tokens
    ids = torch.randint(100, 30000, (micro, 1 + n_img + text_tokens), generator=gen)
    ids[:, 0] = 1
    ids[:, 1:1 + n_img] = processor.image_token_id
    labels = ids.clone()
    labels[:, : 1 + n_img + text_tokens // 2] = -100  # supervise the second half of the text (the "answer")
    pixels = torch.randn(micro, 3, image_size, image_size, generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device), "pixel_values": pixels.to(device)}


def _train_steps(model, batch, steps: int, warmup: int, device, autocast_dtype) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    model.vision_tower.eval()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=device.type == "cuda"):
            out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    tokens = int(batch["attention_mask"].sum())
    step_s = sorted(times)[len(times) // 2]
    return {
        "step_s_median": step_s,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "trainable_params": sum(p.numel() for p in params),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "final_loss": float(out.loss),
    }


def _tower_throughput(tower_dir: Path, device, batch: int, repeats: int) -> dict:
    from vision_tower import load_vision_tower

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tower = load_vision_tower(str(tower_dir), dtype=dtype, device=device)
    x = torch.randn(batch, 3, tower.image_size, tower.image_size, device=device, dtype=dtype)
    with torch.no_grad():
        tower(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            tower(x)
        _sync(device)
    elapsed = time.perf_counter() - start
    return {"dtype": str(dtype).replace("torch.", ""), "batch": batch, "images_per_s": batch * repeats / elapsed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (code-path check, no GPU)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--text-tokens", type=int, default=224, help="text tokens per sample (576 image tokens added)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-stage1", action="store_true")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check_<gpu>.json)")
    args = parser.parse_args(argv)

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type != "cuda" and not args.tiny:
        parser.error("no CUDA device: run with --tiny for the CPU code-path check")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    text_tokens = 16 if args.tiny else args.text_tokens
    started = time.time()
    result = {"device": gpu, "torch": torch.__version__, "tiny": args.tiny, "micro_batch": args.micro_batch}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        t = time.time()
        n_llm = _save_random_llm(tmp / "llm", args.tiny, device)
        n_tower, tower_cfg = _save_random_tower(tmp / "tower", args.tiny)
        result["setup_s"] = round(time.time() - t, 1)
        result["llm_params"], result["tower_params"] = n_llm, n_tower
        from mllm.tiny import save_spm_tokenizer

        tokenizer = save_spm_tokenizer(tmp / "tok")
        spec = TowerSpec(checkpoint=str(tmp / "tower"), config=None, name=tower_cfg.name)
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32

        # ---- stage 2: QLoRA
        t = time.time()
        model, processor = build_model(str(tmp / "llm"), tower=spec, tokenizer=tokenizer, quantization="4bit",
                                       dtype=compute, lora=LoraSpec(r=128, alpha=256, dropout=0.05),
                                       gradient_checkpointing=True)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        result["stage2_load_s"] = round(time.time() - t, 1)
        batch = _batch(processor, args.micro_batch, text_tokens, tower_cfg.image_size, device)
        stage2 = _train_steps(model, batch, args.steps, args.warmup, device, compute)
        img_tokens_per_s = stage2["tokens_per_s"] * processor.num_image_tokens / (processor.num_image_tokens + text_tokens + 1)
        llm_flops = 4 * n_llm * stage2["tokens_per_s"]
        tower_flops = 2 * n_tower * img_tokens_per_s * (tower_cfg.num_layers - 1) / tower_cfg.num_layers
        peak = _peak_flops(gpu)
        stage2["model_flops_per_s"] = llm_flops + tower_flops
        stage2["mfu"] = (llm_flops + tower_flops) / peak if peak else None
        stage2["mfu_llm_only"] = llm_flops / peak if peak else None
        result["stage2_qlora"] = stage2
        del model, batch
        if device.type == "cuda":
            torch.cuda.empty_cache()

        # ---- stage 1: projector only, LLM in bf16
        if not args.skip_stage1:
            t = time.time()
            model, processor = build_model(str(tmp / "llm"), tower=spec, tokenizer=tokenizer, dtype=compute,
                                           gradient_checkpointing=True)
            for p in model.projector.parameters():
                p.data = p.data.float()
            result["stage1_load_s"] = round(time.time() - t, 1)
            batch = _batch(processor, args.micro_batch * 2, max(8, text_tokens // 4), tower_cfg.image_size, device)
            result["stage1_projector"] = _train_steps(model, batch, args.steps, args.warmup, device, compute)
            del model, batch
            if device.type == "cuda":
                torch.cuda.empty_cache()

        result["tower_forward"] = _tower_throughput(tmp / "tower", device, batch=4 if args.tiny else 32,
                                                    repeats=2 if args.tiny else 10)
    result["total_s"] = round(time.time() - started, 1)

    safe = "".join(c if c.isalnum() else "_" for c in gpu).strip("_")[:40] or "device"
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"gpu_check_{'tiny_' if args.tiny else ''}{safe}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    s2 = result["stage2_qlora"]
    print(json.dumps(result, indent=2))
    mfu = "n/a" if s2["mfu"] is None else f"{100 * s2['mfu']:.1f}%"
    peak_mem = "n/a" if s2["peak_memory_gib"] is None else f"{s2['peak_memory_gib']:.1f} GiB"
    print(f"\n[gpu_check] {gpu}: stage-2 QLoRA {s2['tokens_per_s']:.0f} tokens/s, MFU {mfu}, peak {peak_mem}; "
          f"tower {result['tower_forward']['images_per_s']:.1f} img/s; total {result['total_s']} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
