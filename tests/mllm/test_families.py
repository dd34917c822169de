"""Every supported LLM family (tiny random configs): splice forward with loss, LoRA on all linears, batched
generation equal to one-by-one generation."""
from __future__ import annotations

import pytest
import torch

from mllm import LoraSpec
from mllm.tiny import LLM_FAMILIES


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_family_forward_lora_and_batched_generation(family, make_tiny_model, make_images):
    model, processor = make_tiny_model(family, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    # LoRA targets every linear layer of the LLM except lm_head
    lora_targets = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.llm.named_parameters() if "lora_A" in n}
    assert "lm_head" not in lora_targets and len(lora_targets) >= 4, lora_targets
    model.train()
    batch = processor(["<image>\nWhich colour?", "text only sample here"], [make_images(1), None], padding_side="right")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.projector.parameters())

    model.eval()
    prompts = ["<image>\nFirst", "<image>\nA second, much longer prompt with more words"]
    ims = make_images(2)
    singles = [model.generate(**processor([p], [[im]]), max_new_tokens=6, min_new_tokens=6)[0].tolist()
               for p, im in zip(prompts, ims)]
    batched = model.generate(**processor(prompts, [[im] for im in ims], padding_side="left"),
                             max_new_tokens=6, min_new_tokens=6)
    assert [r.tolist() for r in batched] == singles
