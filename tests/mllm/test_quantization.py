"""The 4-bit QLoRA path for real on CPU (bitsandbytes NF4, fp32 compute), 8-bit loading, and merging."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mllm import LoraSpec, load_model, merge_checkpoint, save_pretrained

bnb = pytest.importorskip("bitsandbytes")


def _batch(processor, make_images):
    batch = processor(["<image>\nWhat colour is the square?", "How are you today?"], [make_images(1), None],
                      padding_side="right")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    return batch, labels


def _randomise_lora(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_qlora_forward_backward_grads_only_on_lora_and_projector(make_tiny_model, make_images):
    model, processor = make_tiny_model("llama", quantization="4bit", dtype=torch.float32,
                                       lora=LoraSpec(r=8, alpha=16, dropout=0.05), gradient_checkpointing=True)
    base = model.llm.get_base_model()
    q_proj = base.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    assert q_proj.base_layer.weight.quant_state.nested  # double quantisation
    # tower and projector are never quantised
    for part in (model.vision_tower, model.projector):
        assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in part.modules())
        assert all(p.dtype == torch.float32 for p in part.parameters())
    assert isinstance(model.projector.layers[0], nn.Linear)

    model.train()
    batch, labels = _batch(processor, make_images)
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad, "no gradients at all"
    assert all(n.startswith("projector.") or "lora_" in n for n in with_grad), sorted(with_grad)[:5]
    assert any("lora_" in n for n in with_grad) and any(n.startswith("projector.") for n in with_grad)
    assert not any(p.grad is not None for p in model.vision_tower.parameters())


def test_qlora_checkpoint_round_trip_and_merge(make_tiny_model, make_images, tmp_path):
    model, processor = make_tiny_model("llama", quantization="4bit", dtype=torch.float32,
                                       lora=LoraSpec(r=8, alpha=16, dropout=0.0))
    _randomise_lora(model)
    model.eval()
    batch, _ = _batch(processor, make_images)
    with torch.no_grad():
        reference = model(**batch, return_logits=True).logits
    save_pretrained(model, processor, tmp_path / "qlora")

    loaded, proc = load_model(tmp_path / "qlora")  # auto: 4-bit, as trained
    assert loaded.llm.get_base_model().is_loaded_in_4bit
    with torch.no_grad():
        again = loaded(**batch, return_logits=True).logits
    torch.testing.assert_close(again, reference, rtol=0, atol=0)

    merged_dir = merge_checkpoint(tmp_path / "qlora", tmp_path / "merged", dtype="bf16")
    merged, mproc = load_model(merged_dir, dtype="fp32")
    assert not hasattr(merged.llm, "peft_config") and not getattr(merged.llm, "is_loaded_in_4bit", False)
    assert next(merged.llm.parameters()).dtype == torch.float32
    with torch.no_grad():
        merged_logits = merged(**batch, return_logits=True).logits
    mask = batch["attention_mask"].bool()
    # bf16 weights: agreement to bf16 precision on the logits that matter
    torch.testing.assert_close(merged_logits[mask], reference[mask], rtol=2e-2, atol=2e-2)
    # where the reference prediction is not a near-tie, the merged model predicts the same token
    top2 = reference[mask].topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.05
    assert clear.sum() > 0
    assert torch.equal(merged_logits[mask].argmax(-1)[clear], reference[mask].argmax(-1)[clear])


def test_lora_merge_into_original_base(make_tiny_model, make_images, tmp_path):
    model, processor = make_tiny_model("qwen2", lora=LoraSpec(r=8, alpha=16, dropout=0.0))
    _randomise_lora(model)
    model.eval()
    batch, _ = _batch(processor, make_images)
    with torch.no_grad():
        reference = model(**batch, return_logits=True).logits
    save_pretrained(model, processor, tmp_path / "lora")
    merged, _ = load_model(merge_checkpoint(tmp_path / "lora", tmp_path / "merged", dtype="fp32"))
    with torch.no_grad():
        merged_logits = merged(**batch, return_logits=True).logits
    torch.testing.assert_close(merged_logits, reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        merge_checkpoint(tmp_path / "merged", tmp_path / "again")


def test_8bit_llm_keeps_tower_and_projector_unquantised(make_tiny_model, make_images):
    model, processor = make_tiny_model("llama", quantization="8bit", dtype=torch.float32)
    layer = model.llm.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt)
    assert not any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.projector.modules())
    batch, labels = _batch(processor, make_images)
    with torch.no_grad():
        out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)


def test_training_after_cpu_inference_has_correct_gradients(make_tiny_model, make_images):
    """bitsandbytes repacks 4-bit weights for its CPU inference kernel (no autograd) on an eval-mode forward;
    training afterwards must not run through that kernel."""

    def lora_grads(evaluate_first: bool):
        torch.manual_seed(0)
        model, processor = make_tiny_model("llama", quantization="4bit", dtype=torch.float32,
                                           lora=LoraSpec(r=8, alpha=16, dropout=0.0))
        _randomise_lora(model)
        batch, labels = _batch(processor, make_images)
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(**batch)
        model.train()
        out = model(**batch, labels=labels)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_a, grads_a = lora_grads(False)
    loss_b, grads_b = lora_grads(True)
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
