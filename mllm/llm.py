"""Loading the language model: precision, bitsandbytes quantisation, LoRA via peft, device placement.

Only the LLM is ever quantised: the vision tower and projector are separate modules that bitsandbytes never
sees, in training and inference alike (LLaVA quantised its projector at inference but not in training).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .config import QUANTIZATIONS, LoraSpec
from .hub import LLMLoadError, pretrained_kwargs, refusing_remote_code

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """`None`/"auto" → bf16 on CUDA, fp32 elsewhere (bf16 matmuls are ~17x slower than fp32 on CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        return torch.bfloat16 if on_cuda else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(DTYPES))}")
    return DTYPES[dtype]


def default_device() -> torch.device:
    """Where a model is served when the caller names no device: CUDA when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def bnb_config(quantization: str, compute_dtype: torch.dtype, quant_storage: torch.dtype | None = None):
    """QLoRA's recipe: NF4 with double quantisation; `quant_storage` must match the compute dtype under FSDP."""
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=quant_storage or torch.uint8,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")


def load_llm(
    name_or_path: str,
    *,
    quantization: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map=None,
    attn_implementation: str | None = "sdpa",
    quant_storage: torch.dtype | None = None,
    revision: str | None = None,
) -> nn.Module:
    """Load any Hugging Face causal LM, optionally in 4-bit NF4 (double quant) or 8-bit.

    Never runs code shipped with the checkpoint (`auto_map`); `revision` pins a hub branch, tag or commit.
    """
    from transformers import AutoModelForCausalLM

    if quantization is not None:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                f"quantization={quantization!r} needs bitsandbytes: pip install bitsandbytes (or load without quantization)"
            ) from exc
    compute_dtype = resolve_dtype(dtype)
    kwargs: dict = {"dtype": compute_dtype, **pretrained_kwargs(revision)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:
        kwargs["quantization_config"] = bnb_config(quantization, compute_dtype, quant_storage)
        if device_map is None:  # bitsandbytes quantises while placing weights: give it a device
            device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        with refusing_remote_code(name_or_path, "LLM"):
            model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as exc:
        raise LLMLoadError(
            f"could not load the LLM {name_or_path!r}: not a local directory with a config.json, and the hub is "
            f"unreachable or has no such repo ({exc})"
        ) from exc
    if quantization == "4bit":
        keep_cpu_4bit_trainable(model)
    return model


def keep_cpu_4bit_trainable(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On AVX512-BF16 CPUs, bnb >= 0.48 repacks a Linear4bit's weight (bf16 absmax, no double quant) on its first
    eval-mode forward and keeps using that kernel, which has no autograd: LoRA training after any evaluation in
    the same process would get wrong gradients, and evaluation would not compute what training computed.
    Returns the number of layers changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def apply_lora(llm: nn.Module, spec: LoraSpec) -> nn.Module:
    """Wrap the LLM with trainable LoRA adapters (peft). The base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    for param in llm.parameters():
        param.requires_grad_(False)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(llm, config)


def load_adapter(llm: nn.Module, adapter_dir: str, *, trainable: bool = False,
                 dtype: torch.dtype | None = None) -> nn.Module:
    """Wrap `llm` with a saved peft adapter; for inference the adapter is cast to the compute `dtype`.

    peft loads adapter weights in fp32 whatever the base's dtype, so a bf16 model would run fp32 LoRA matmuls
    (and their casts) at every layer of every step; trainable adapters stay fp32 (optimizer master weights).
    """
    from peft import PeftModel

    llm = PeftModel.from_pretrained(llm, adapter_dir, is_trainable=trainable)
    if not trainable and dtype is not None:
        for name, param in llm.named_parameters():
            if "lora_" in name and param.dtype != dtype:
                param.data = param.data.to(dtype)
    return llm


def load_merged_llm(llm_source: str, adapter_dir: str, *, base: str, dtype: torch.dtype, device_map=None,
                    revision: str | None = None) -> nn.Module:
    """The base LLM with a LoRA adapter folded into its weights, in `dtype` (no peft wrapper, no quantisation).

    `base="dequantized"`: the dequantised NF4 weights a QLoRA adapter was trained against, so the merge computes
    what the trained model did; `"original"`: the base's original weights. Never merged into 4-bit weights (a
    known LLaVA/QLoRA failure). The 4-bit base is loaded in the default compute dtype, as training loads it.
    """
    if base == "dequantized":
        llm = load_llm(llm_source, quantization="4bit", dtype=None, device_map=device_map, revision=revision)
        llm = llm.dequantize(dtype=dtype)
        llm.is_loaded_in_4bit = False  # transformers leaves the flag set on the dequantised model
    elif base == "original":
        llm = load_llm(llm_source, quantization=None, dtype=dtype, device_map=device_map, revision=revision)
    else:
        raise ValueError(f"base must be 'dequantized' or 'original', got {base!r}")
    merged = load_adapter(llm, adapter_dir).merge_and_unload().to(dtype)
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    return merged


def enable_gradient_checkpointing(llm: nn.Module) -> None:
    """Non-reentrant checkpointing: works with frozen inputs and LoRA without `enable_input_require_grads`."""
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.x name
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(llm, "config"):
        llm.config.use_cache = False


def base_causal_lm(llm: nn.Module) -> nn.Module:
    """The transformers model under any peft wrapper."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def input_device(llm: nn.Module) -> torch.device:
    """Device of the input embeddings: where the tower, projector and spliced embeddings must live."""
    return base_causal_lm(llm).get_input_embeddings().weight.device


def stop_token_ids(tokenizer, llm: nn.Module | None = None) -> list[int]:
    """EOS plus the end-of-turn tokens of common chat formats that this tokenizer knows."""
    ids: list[int] = []
    candidates = [tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"]
    vocab = tokenizer.get_vocab()
    for tok in candidates:
        if tok is not None and tok in vocab and vocab[tok] not in ids:
            ids.append(vocab[tok])
    if llm is not None:
        gen_eos = getattr(getattr(base_causal_lm(llm), "generation_config", None), "eos_token_id", None)
        for tok_id in [gen_eos] if isinstance(gen_eos, int) else (gen_eos or []):
            if tok_id not in ids:
                ids.append(tok_id)
    return ids
