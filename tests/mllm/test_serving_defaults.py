"""Where and in what precision `load_model` and the serving commands put a checkpoint, and --merge-on-load.

No GPU here, so CUDA placement is tested by the decisions: with `torch.cuda.is_available` patched, the
arguments handed to transformers' `from_pretrained` (stopped right there). Adapter dtypes and the merge are
tested for real on the CPU.
"""
from __future__ import annotations

import argparse

import pytest
import torch
from transformers import AutoModelForCausalLM

from mllm import LoraSpec, load_model, save_pretrained
from mllm.errors import UserError

bnb = pytest.importorskip("bitsandbytes")


class _Stop(Exception):
    """Raised by the from_pretrained spy once it has seen the arguments."""


def _randomise_lora(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.fixture(scope="module")
def checkpoints(make_tiny_model, tmp_path_factory):
    """kind -> saved checkpoint: lora (fp32 base), qlora (4-bit base), full (LLM weights)."""
    root = tmp_path_factory.mktemp("serving")
    out = {}
    for kind, kwargs in {"lora": {"lora": LoraSpec(r=4, alpha=8, dropout=0.0)},
                         "qlora": {"quantization": "4bit", "dtype": torch.float32,
                                   "lora": LoraSpec(r=4, alpha=8, dropout=0.0)},
                         "full": {"train_llm": True}}.items():
        model, processor = make_tiny_model("llama", **kwargs)
        _randomise_lora(model)
        out[kind] = save_pretrained(model, processor, root / kind)
    return out


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    calls = []

    def spy(name, **kwargs):
        calls.append(kwargs)
        raise _Stop

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    return calls


def _batch(processor, make_images):
    return processor(["<image>\nWhat colour is the square?", "Hello there, text only"], [make_images(1), None],
                     padding_side="left")


@pytest.mark.parametrize("kind", ["lora", "qlora", "full"])
def test_load_model_puts_the_llm_on_cuda_in_bf16_when_there_is_one(kind, checkpoints, from_pretrained_calls,
                                                                   monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(_Stop):
        load_model(checkpoints[kind])
    kwargs = from_pretrained_calls[0]
    assert kwargs["device_map"] == {"": "cuda"} and kwargs["dtype"] == torch.bfloat16
    if kind == "qlora":  # served as trained: 4-bit NF4 computing in bf16, quantised straight onto the GPU
        config = kwargs["quantization_config"]
        assert config.load_in_4bit and config.bnb_4bit_compute_dtype == torch.bfloat16
    else:
        assert "quantization_config" not in kwargs


def test_without_cuda_or_when_told_the_cpu_gets_fp32(checkpoints, from_pretrained_calls, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(_Stop):
        load_model(checkpoints["lora"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(_Stop):
        load_model(checkpoints["lora"], device="cpu")  # an explicit device wins over the default
    for kwargs in from_pretrained_calls:
        assert kwargs["device_map"] == {"": "cpu"} and kwargs["dtype"] == torch.float32


def test_merge_on_load_dequantises_the_4bit_base_on_the_gpu(checkpoints, from_pretrained_calls, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(_Stop):
        load_model(checkpoints["qlora"], merge_on_load=True)
    kwargs = from_pretrained_calls[0]
    assert kwargs["quantization_config"].load_in_4bit and kwargs["device_map"] == {"": "cuda"}


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_adapters_are_served_in_the_compute_dtype_and_trained_in_fp32(kind, checkpoints, make_images):
    model, processor = load_model(checkpoints[kind], dtype="bf16")
    lora = {p.dtype for n, p in model.llm.named_parameters() if "lora_" in n}
    assert lora == {torch.bfloat16}  # peft alone would load them in fp32
    with torch.no_grad():
        assert torch.isfinite(model(**_batch(processor, make_images), return_logits=True).logits).all()
    trainable, _ = load_model(checkpoints[kind], dtype="bf16", trainable=True)
    assert {p.dtype for n, p in trainable.llm.named_parameters() if "lora_" in n} == {torch.float32}


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_merge_on_load_computes_what_the_adapter_did(kind, checkpoints, make_images):
    reference, processor = load_model(checkpoints[kind])  # as trained: 4-bit base + adapter for qlora
    merged, _ = load_model(checkpoints[kind], merge_on_load=True)
    assert not hasattr(merged.llm, "peft_config") and not getattr(merged.llm, "is_loaded_in_4bit", False)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.llm.modules())
    assert {p.dtype for p in merged.llm.parameters()} == {torch.float32}
    assert merged.config.extra["merged_on_load"] == ("dequantized" if kind == "qlora" else "original")
    batch = _batch(processor, make_images)
    with torch.no_grad():
        want = reference(**batch, return_logits=True).logits
        got = merged(**batch, return_logits=True).logits
    mask = batch["attention_mask"].bool()
    assert (want[mask] - want[mask].mean()).abs().max() > 0.1  # the adapter and base give non-trivial logits
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-4, atol=1e-4)


def test_merge_on_load_refuses_a_quantised_or_trainable_merge_and_ignores_full_checkpoints(checkpoints):
    with pytest.raises(UserError, match="merge_on_load"):
        load_model(checkpoints["qlora"], merge_on_load=True, quantization="4bit")
    with pytest.raises(UserError, match="merge_on_load"):
        load_model(checkpoints["lora"], merge_on_load=True, trainable=True)
    model, _ = load_model(checkpoints["full"], merge_on_load=True)  # already full weights: loads as usual
    assert "merged_on_load" not in model.config.extra


def test_chat_and_demo_pass_merge_on_load_to_the_loader(checkpoints, monkeypatch):
    from demo.app import build_parser as demo_parser
    from mllm.chat.cli import build_parser as chat_parser
    from mllm.chat.command import load_for_command

    seen = []

    def spy(directory, **kwargs):
        seen.append(kwargs)
        raise _Stop

    monkeypatch.setattr("mllm.serialization.load_model", spy)
    for parser in (chat_parser(), demo_parser()):
        args = parser.parse_args(["--model", str(checkpoints["qlora"]), "--merge-on-load"])
        assert load_for_command("test", args) == (None, 1)
        assert parser.parse_args([]).merge_on_load is False
    assert [kw["merge_on_load"] for kw in seen] == [True, True]


def test_eval_cli_passes_merge_on_load(monkeypatch, tmp_path):
    from mllm.eval import cli

    seen = []
    monkeypatch.setattr("mllm.eval.runner.run_eval", lambda config: seen.append(config))
    assert cli.main(["--benchmark", "pope", "--data", str(tmp_path), "--merge-on-load"]) == 0
    assert cli.main(["--benchmark", "pope", "--data", str(tmp_path)]) == 0
    assert [c.merge_on_load for c in seen] == [True, False]
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)
