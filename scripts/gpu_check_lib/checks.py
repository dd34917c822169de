"""What every phase relies on, checked before it is timed: the pre-flight (the environment a lent GPU machine
gives us, found wanting in seconds rather than after minutes) and each model's device and dtype placement."""
from __future__ import annotations

import importlib.metadata
import platform
import sys
import time

import torch
from torch import nn

from .flops import peak_tflops
from .workload import Workload

TRACKED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "timm", "safetensors",
                    "tokenizers", "sentencepiece", "huggingface_hub", "numpy")


# ---------------------------------------------------------------------------------------------- checks
def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def describe_placement(model) -> dict:
    """Devices and dtypes of an `MLLM`'s parts, as a reader of the results wants to see them."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # stage 1 and the tower need no bitsandbytes
        Linear4bit = ()

    causal_lm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    head = causal_lm.get_output_embeddings()
    linear, lora, compute = set(), set(), set()
    for name, module in causal_lm.named_modules():
        if not isinstance(module, nn.Linear) or module is head:
            continue
        if "lora_" in name:
            lora.add(dtype_name(module.weight.dtype))
        elif isinstance(module, Linear4bit):
            linear.add("nf4" if module.weight.quant_type == "nf4" else module.weight.quant_type)
            compute.add(dtype_name(module.compute_dtype))
        else:
            linear.add(dtype_name(module.weight.dtype))
    tensors = list(model.parameters()) + list(model.buffers())
    return {
        "devices": sorted({t.device.type for t in tensors}),
        "llm_linear": sorted(linear),
        "llm_4bit_compute": sorted(compute),
        "lm_head": dtype_name(head.weight.dtype),
        "lora": sorted(lora),
        "tower": sorted({dtype_name(p.dtype) for p in model.vision_tower.parameters()}),
        "projector": sorted({dtype_name(p.dtype) for p in model.projector.parameters()}),
    }


def check_placement(model, w: Workload, *, llm: str, lora: torch.dtype | None, projector: torch.dtype) -> dict:
    """Raise unless every tensor is on the workload's device and each part has the dtype the phase expects."""
    found = describe_placement(model)
    compute = dtype_name(w.dtype)
    expected = {
        "devices": [w.device.type],
        "llm_linear": [llm],
        "llm_4bit_compute": [compute] if llm == "nf4" else [],
        "lm_head": compute,
        "lora": [dtype_name(lora)] if lora is not None else [],
        "tower": [compute],
        "projector": [dtype_name(projector)],
    }
    wrong = {k: {"expected": v, "found": found[k]} for k, v in expected.items() if found[k] != v}
    if wrong:
        raise AssertionError(f"model placement differs from what this phase measures: {wrong}")
    return found


# ---------------------------------------------------------------------------------------------- preflight
def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def _device_facts(w: Workload) -> dict:
    if w.device.type != "cuda":
        return {"name": platform.processor() or platform.machine() or "cpu", "type": "cpu"}
    props = torch.cuda.get_device_properties(w.device)
    free, total = torch.cuda.mem_get_info(w.device)
    return {"name": props.name, "type": "cuda", "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "total_gib": round(total / 2 ** 30, 2),
            "free_gib": round(free / 2 ** 30, 2), "peak_bf16_tflops": w.peak_tflops,
            "peak_source": "datasheet" if peak_tflops(props.name) == w.peak_tflops else "--peak-tflops"}


def _check_offline(w: Workload) -> dict:
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        raise RuntimeError("HF_HUB_OFFLINE is not set: a hub lookup would hang on a machine without internet")
    return {"HF_HUB_OFFLINE": True}


def _check_4bit(w: Workload) -> dict:
    """Quantise → dequantise → 4-bit matmul on the device, with the bitsandbytes that travelled here."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    n = 256 if w.tiny else 4096
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(n, n, generator=gen).to(w.dtype)
    q, state = bnbf.quantize_4bit(weight.to(w.device), quant_type="nf4", compress_statistics=True)
    restored = bnbf.dequantize_4bit(q, state).float().cpu()
    rel_error = float((restored - weight.float()).norm() / weight.float().norm())
    if not rel_error < 0.15:  # NF4 on a Gaussian: ~0.1
        raise RuntimeError(f"NF4 round trip relative error {rel_error:.3f} (expected ~0.1)")
    layer = bnb.nn.Linear4bit(n, n, bias=False, compute_dtype=w.dtype, quant_type="nf4", compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=True)
    layer = layer.to(w.device)
    dense = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    matmul = {}
    for rows in (1, 8):
        x = torch.randn(rows, n, generator=gen).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            got, ref = layer(x).float(), torch.nn.functional.linear(x, dense).float()
        err = float((got - ref).norm() / ref.norm())
        if not err < 0.02:
            raise RuntimeError(f"4-bit matmul with {rows} row(s) is off by {err:.4f} from dequantise + matmul")
        matmul[f"rows_{rows}_rel_error"] = err
    return {"nf4_round_trip_rel_error": rel_error, **matmul, "weight_device": layer.weight.device.type}


def _measure_matmul(w: Workload) -> dict:
    """What a large bf16 matmul reaches here: the practical ceiling next to the datasheet peak."""
    if w.device.type != "cuda":
        return {"tflops": None, "note": "CPU: not measured"}
    n = 8192
    a = torch.randn(n, n, device=w.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=w.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    w.sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    w.sync()
    tflops = 10 * 2 * n ** 3 / (time.perf_counter() - start) / 1e12
    return {"size": n, "tflops": tflops, "fraction_of_peak": tflops / w.peak_tflops if w.peak_tflops else None}


def _check_tokenizer(w: Workload) -> dict:
    tok = w.tokenizer()
    ids = tok("A photo of a cat.")["input_ids"]
    if ids[0] != 1 or len(tok) < 32000:
        raise RuntimeError(f"unexpected tokenizer: BOS {ids[0]}, vocabulary {len(tok)}")
    return {"vocab": len(tok), "source": w.artifacts["tokenizer"]["source"]}


def _check_tower(w: Workload) -> dict:
    from vision_tower import load_vision_tower

    path = w.tower_dir()
    tower = load_vision_tower(str(path), dtype=w.dtype, device=w.device)
    size = tower.image_size
    with torch.no_grad():
        out = tower(torch.randn(2, 3, size, size, device=w.device))
    if out.device.type != w.device.type or out.dtype != w.dtype or not torch.isfinite(out).all():
        raise RuntimeError(f"tower output on {out.device} in {out.dtype}, finite={bool(torch.isfinite(out).all())}")
    return {**w.artifacts["tower"], "output_shape": list(out.shape)}


PREFLIGHT_CHECKS = {"offline": _check_offline, "bitsandbytes": _check_4bit, "matmul": _measure_matmul,
                    "tokenizer": _check_tokenizer, "tower": _check_tower}


def preflight(w: Workload, record) -> dict:
    """Everything that would make the later phases fail, found in seconds; failed checks skip their phases."""
    record({"versions": _versions(), "device": _device_facts(w), "argv": sys.argv[1:]})
    checks = {}
    for name, check in PREFLIGHT_CHECKS.items():
        start = time.monotonic()
        try:
            checks[name] = {"ok": True, **check(w)}
        except Exception as exc:
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
            w.broken.add(name)
        checks[name]["seconds"] = round(time.monotonic() - start, 2)
        record({"checks": checks})
    if w.broken:
        raise RuntimeError(f"pre-flight checks failed: {sorted(w.broken)} (phases needing them are skipped)")
    return {}
