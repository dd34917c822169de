"""The measurements. Adding one: write `def my_phase(w: Workload, record) -> dict` and add a `Phase` to PHASES.

Every phase builds what it measures through the project's own code (`build_model`, `load_model`,
`load_vision_tower`), asserts the model sits on the expected device in the expected dtypes before timing it,
and returns JSON-ready results; `record(dict)` saves partial results at once (they survive a later crash).
The model stack (`mllm`'s builder and loader: transformers, peft, bitsandbytes) is imported inside the phases, so
the pre-flight reports within seconds and a broken library fails the phases that use it, recorded, not the run.
"""
from __future__ import annotations

import gc
import statistics
import time

import torch
from torch import nn

from mllm.constants import IGNORE_INDEX

from .checks import check_placement, dtype_name, preflight
from .flops import count_llm, count_tower, tower_forward, train_step_flops, utilisation
from .harness import Phase
from .workload import Workload, randomise_lora


def setup_llm(w: Workload, record) -> dict:
    """The random 7B LLM every later phase loads (timed apart so the phases time only themselves)."""
    w.llm_dir()
    return {"llm": w.artifacts["llm"]}


# ---------------------------------------------------------------------------------------------- training
def _trainables_fp32(model) -> list[nn.Parameter]:
    """As the trainer does: trainable weights in fp32, bf16 compute from autocast."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    return params


def _time_training(model, batches: dict, w: Workload) -> dict:
    """Optimizer steps on each batch, interleaved (a, b, a, b, ...) so drifting clocks hit them alike."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    inputs = {name: {k: v for k, v in b.items() if k != "seq_lens"} for name, b in batches.items()}

    def step(batch) -> float:
        with torch.autocast(w.device.type, dtype=w.dtype, enabled=w.device.type == "cuda"):
            out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    for batch in inputs.values():
        for _ in range(w.warmup):
            step(batch)
    times = {name: [] for name in inputs}
    peaks = {name: {"peak_allocated_gib": 0.0, "peak_reserved_gib": 0.0} for name in inputs}
    losses = {}
    for _ in range(w.steps):
        for name, batch in inputs.items():
            if w.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(w.device)
            w.sync()
            start = time.perf_counter()
            losses[name] = step(batch)
            w.sync()
            times[name].append(time.perf_counter() - start)
            if w.device.type == "cuda":
                peaks[name]["peak_allocated_gib"] = max(peaks[name]["peak_allocated_gib"],
                                                        torch.cuda.max_memory_allocated(w.device) / 2 ** 30)
                peaks[name]["peak_reserved_gib"] = max(peaks[name]["peak_reserved_gib"],
                                                       torch.cuda.max_memory_reserved(w.device) / 2 ** 30)
    out = {}
    for name, batch in batches.items():
        if not torch.isfinite(torch.tensor(losses[name])):
            raise RuntimeError(f"{name}: non-finite loss {losses[name]}")
        tokens = sum(batch["seq_lens"])
        median, best = statistics.median(times[name]), min(times[name])
        out[name] = {
            "step_s_median": median, "step_s_min": best, "steps": w.steps, "warmup": w.warmup,
            "rows": len(batch["seq_lens"]), "tokens_per_step": tokens,
            "padded_tokens_per_step": int(batch["input_ids"].numel()),
            "tokens_per_s": tokens / median, "tokens_per_s_best": tokens / best,
            "final_loss": losses[name], **(peaks[name] if w.device.type == "cuda" else {}),
        }
    return out


def _linear_params(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def _add_flops(model, batches: dict, timings: dict, w: Workload, *, checkpointing: bool) -> None:
    llm, tower = count_llm(model.llm), count_tower(model.vision_tower)
    for name, batch in batches.items():
        images = int(batch["pixel_values"].shape[0])
        flops = train_step_flops(
            llm, seq_lens=batch["seq_lens"], label_tokens=int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
            projector_params=_linear_params(model.projector), image_tokens=images * model.num_image_tokens,
            tower=tower, images=images, checkpointing=checkpointing)
        timings[name].update(flops=flops, **utilisation(flops, timings[name]["step_s_median"], w.peak_tflops))


def stage2_qlora(w: Workload, record) -> dict:
    """QLoRA as `finetune` runs it (4-bit NF4 LLM, LoRA r128 on every linear, checkpointing), padded and not."""
    from mllm import LoraSpec, build_model

    start = time.monotonic()
    model, processor = build_model(str(w.llm_dir()), tower=w.tower_spec(), tokenizer=w.tokenizer(),
                                   quantization="4bit", dtype=w.dtype, lora=LoraSpec(r=128, alpha=256, dropout=0.05),
                                   gradient_checkpointing=True)
    _trainables_fp32(model)
    placement = check_placement(model, w, llm="nf4", lora=torch.float32, projector=torch.float32)
    record({"load_s": round(time.monotonic() - start, 1), "placement": placement,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)})
    batches = {"unpadded": w.training_batch(processor, w.micro_batch, w.text_tokens, padded=False),
               "right_padded": w.training_batch(processor, w.micro_batch, w.text_tokens, padded=True)}
    timings = _time_training(model, batches, w)
    _add_flops(model, batches, timings, w, checkpointing=True)
    timings["right_padded"]["speed_vs_unpadded"] = (timings["right_padded"]["tokens_per_s"]
                                                    / timings["unpadded"]["tokens_per_s"])
    record(timings)
    model.eval()
    randomise_lora(model)  # a few steps leave LoRA B near zero: make the served adapter change the answers
    w.keep_qlora_checkpoint(model, processor)  # what the generation phases serve
    return {"checkpoint": w.artifacts["qlora_checkpoint"]}


def projector_tokens(w: Workload, record) -> dict:
    """576 vs 144 image tokens: stage-2 QLoRA steps on image-heavy samples (short text) and a prefill, with
    `mlp2x_gelu` and with `pixel_shuffle2_mlp2x_gelu`, one model at a time (each its own peak memory)."""
    from mllm import LoraSpec, build_model

    text_tokens = max(8, w.text_tokens // 7)  # ~32 text tokens next to 576 image tokens: image-heavy, short answers
    out = {}
    for projector in ("mlp2x_gelu", "pixel_shuffle2_mlp2x_gelu"):
        start = time.monotonic()
        model, processor = build_model(str(w.llm_dir()), tower=w.tower_spec(), tokenizer=w.tokenizer(),
                                       quantization="4bit", dtype=w.dtype, projector_type=projector,
                                       lora=LoraSpec(r=128, alpha=256, dropout=0.05), gradient_checkpointing=True)
        _trainables_fp32(model)
        check_placement(model, w, llm="nf4", lora=torch.float32, projector=torch.float32)
        batches = {"image_heavy": w.training_batch(processor, w.micro_batch, text_tokens, padded=False)}
        timing = _time_training(model, batches, w)
        _add_flops(model, batches, timing, w, checkpointing=True)
        entry = {"image_tokens": model.num_image_tokens, "load_s": round(time.monotonic() - start, 1),
                 **timing["image_heavy"],
                 "samples_per_s": w.micro_batch / timing["image_heavy"]["step_s_median"],
                 "samples_per_s_best": w.micro_batch / timing["image_heavy"]["step_s_min"]}
        model.eval()
        prompt = processor.chat_batch([[{"from": "human", "value": "<image>\nDescribe the picture."}]],
                                      [w.images(1)])
        with torch.no_grad():
            model.generate(**prompt, max_new_tokens=1)  # warm-up
            times = []
            for _ in range(w.steps):
                w.sync()
                begin = time.perf_counter()
                generated = model.generate(**prompt, max_new_tokens=1, return_dict_in_generate=True)
                w.sync()
                times.append(time.perf_counter() - begin)
        cache = generated.past_key_values
        kv_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        entry.update(prefill_s_median=statistics.median(times), prefill_s_min=min(times),
                     prompt_tokens=cache.get_seq_length(), kv_cache_bytes=kv_bytes,
                     kv_image_bytes=kv_bytes // cache.get_seq_length() * model.num_image_tokens)
        out[projector] = entry
        record({projector: entry})
        del model, processor, generated, cache
        gc.collect()
        if w.device.type == "cuda":
            torch.cuda.empty_cache()
    a, b = out["mlp2x_gelu"], out["pixel_shuffle2_mlp2x_gelu"]
    ratios = {"train_samples_per_s": b["samples_per_s"] / a["samples_per_s"],
              "prefill_speedup": a["prefill_s_median"] / b["prefill_s_median"],
              "kv_image_reduction": a["kv_image_bytes"] / b["kv_image_bytes"]}
    if "peak_allocated_gib" in a:
        ratios["peak_allocated_reduction"] = a["peak_allocated_gib"] / b["peak_allocated_gib"]
    return {"text_tokens": text_tokens, "ratios_pixel_shuffle_vs_mlp": ratios}


def stage1_projector(w: Workload, record) -> dict:
    """Stage 1 on CUDA: the bf16 LLM and tower frozen on the GPU, only the projector trained."""
    from mllm import build_model

    start = time.monotonic()
    device_map = {"": str(w.device)} if w.device.type == "cuda" else None
    model, processor = build_model(str(w.llm_dir()), tower=w.tower_spec(), tokenizer=w.tokenizer(), dtype=w.dtype,
                                   device_map=device_map, gradient_checkpointing=True)
    _trainables_fp32(model)
    placement = check_placement(model, w, llm=dtype_name(w.dtype), lora=None, projector=torch.float32)
    record({"load_s": round(time.monotonic() - start, 1), "placement": placement})
    batches = {"unpadded": w.training_batch(processor, 2 * w.micro_batch, max(8, w.text_tokens // 4), padded=False)}
    timings = _time_training(model, batches, w)
    _add_flops(model, batches, timings, w, checkpointing=True)
    return timings


def tower_throughput(w: Workload, record) -> dict:
    """The tower alone, frozen, in the compute dtype: images per second and the FLOP rate it reaches."""
    from vision_tower import load_vision_tower

    tower = load_vision_tower(str(w.tower_dir()), dtype=w.dtype, device=w.device)
    if {p.device.type for p in tower.parameters()} != {w.device.type} or tower.dtype != w.dtype:
        raise AssertionError(f"tower on {tower.device} in {tower.dtype}, expected {w.device.type} {w.dtype}")
    x = torch.randn(w.tower_batch, 3, tower.image_size, tower.image_size, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        for _ in range(2):
            tower(x)
        times = []
        for _ in range(w.tower_repeats):
            w.sync()
            start = time.perf_counter()
            tower(x)
            w.sync()
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    flops = tower_forward(count_tower(tower), w.tower_batch)
    tflops = flops / median / 1e12
    return {"dtype": dtype_name(w.dtype), "batch": w.tower_batch, "repeats": w.tower_repeats,
            "images_per_s": w.tower_batch / median, "images_per_s_best": w.tower_batch / min(times),
            "flops_per_batch": flops, "model_tflops_per_s": tflops,
            "mfu": tflops / w.peak_tflops if w.peak_tflops else None}


# ---------------------------------------------------------------------------------------------- generation
def _agreement(rows: list[list[int]], reference: list[list[int]]) -> dict:
    equal_tokens = sum(a == b for row, ref in zip(rows, reference) for a, b in zip(row, ref))
    total = sum(len(ref) for ref in reference)
    first_diff = [next((i for i, (a, b) in enumerate(zip(row, ref)) if a != b), None)
                  for row, ref in zip(rows, reference)]
    return {"rows_identical": sum(d is None for d in first_diff), "rows": len(reference),
            "token_agreement": equal_tokens / total, "first_difference": first_diff}


def _generation(w: Workload, record, *, merge_on_load: bool) -> dict:
    from mllm import load_model
    from mllm.llm import stop_token_ids

    start = time.monotonic()
    model, processor = load_model(w.qlora_checkpoint(), merge_on_load=merge_on_load)  # default device: CUDA
    placement = check_placement(model, w, llm=dtype_name(w.dtype) if merge_on_load else "nf4",
                                lora=None if merge_on_load else w.dtype, projector=w.dtype)
    record({"load_s": round(time.monotonic() - start, 1), "placement": placement})
    count = max(w.generation_batches)
    questions = [f"Question {i}: describe the picture" + " in great detail" * (i % 4) for i in range(count)]
    conversations = [[{"from": "human", "value": f"<image>\n{q}"}] for q in questions]
    images = [[im] for im in w.images(count)]
    kwargs = {"max_new_tokens": w.new_tokens, "min_new_tokens": w.new_tokens, "do_sample": False,
              "pad_token_id": processor.tokenizer.pad_token_id,
              "eos_token_id": stop_token_ids(processor.tokenizer, model.llm)}

    def generate(lo: int, hi: int) -> list[list[int]]:
        batch = processor.chat_batch(conversations[lo:hi], images[lo:hi])
        return [row.tolist() for row in model.generate(**batch, **kwargs)]

    model.generate(**processor.chat_batch(conversations[:1], images[:1]), **{**kwargs, "max_new_tokens": 2,
                                                                               "min_new_tokens": 2})
    results, singles = {}, None
    for size in sorted(w.generation_batches):
        w.sync()
        begin = time.perf_counter()
        rows = [row for lo in range(0, count, size) for row in generate(lo, min(count, lo + size))]
        w.sync()
        seconds = time.perf_counter() - begin
        entry = {"prompts": count, "new_tokens_each": w.new_tokens, "seconds": seconds,
                 "tokens_per_s": count * w.new_tokens / seconds}
        if singles is None:
            singles = rows
            entry["tokens"] = rows  # compared across phases (4-bit vs merged) by the report
        else:
            entry["agreement_with_batch_1"] = _agreement(rows, singles)
        results[f"batch_{size}"] = entry
        record({"generation": results})
    return {"served_as": "merged bf16 (merge_on_load)" if merge_on_load else "4-bit base + adapter (as trained)"}


def generation_4bit(w: Workload, record) -> dict:
    """Serving the QLoRA checkpoint as trained (4-bit base + adapter in the compute dtype), batch 1 vs batched."""
    return _generation(w, record, merge_on_load=False)


def generation_merged(w: Workload, record) -> dict:
    """The same checkpoint with --merge-on-load: the adapter folded into a bf16 copy of the dequantised base."""
    return _generation(w, record, merge_on_load=True)


NEEDS_ALL = ("bitsandbytes", "tokenizer", "tower")
PHASES = [  # in order of value: a run cut short still has the headline numbers
    Phase("preflight", preflight, 20, (), "versions, CUDA 4-bit round trip, bf16 matmul, tokenizer, tower build"),
    Phase("setup_llm", setup_llm, 45, (), "random 7B Llama initialised on the GPU, saved as bf16 safetensors"),
    Phase("stage2_qlora", stage2_qlora, 75, NEEDS_ALL, "QLoRA steps, 4 x ~800 tokens, unpadded vs right-padded"),
    Phase("tower_forward", tower_throughput, 10, ("tower",), "EVA02-L-14-336 forward, bf16, batch 32"),
    Phase("stage1_projector", stage1_projector, 45, ("tokenizer", "tower"), "projector-only steps, bf16 LLM on GPU"),
    Phase("generation_4bit", generation_4bit, 60, NEEDS_ALL, "greedy decoding at batch 1, 4, 8 on the 4-bit base"),
    Phase("generation_merged", generation_merged, 70, NEEDS_ALL, "the same with --merge-on-load (bf16 merge)"),
    Phase("projector_tokens", projector_tokens, 90, NEEDS_ALL,
          "576 vs 144 image tokens: QLoRA steps and prefill, mlp2x_gelu vs pixel_shuffle2_mlp2x_gelu"),
]
