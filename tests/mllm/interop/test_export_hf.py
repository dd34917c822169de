"""Ours (CLIP tower) → `export --format llava-hf` → transformers' Llava: same prompt, ids, pixels, logits, tokens;
LoRA/QLoRA merged first; a fresh isolated Python process with only transformers answers as our chat does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mllm.cli import main

from .conftest import TOL, images

QUESTION = "What is in the picture?"


def hf_messages(question=QUESTION):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def test_export_loads_in_transformers_and_matches(ours_clip, tmp_path, compare, capsys):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mllm import load_model
    from mllm.templates import render

    out = tmp_path / "exported"
    assert main(["export", str(ours_clip), str(out), "--format", "llava-hf", "--dtype", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert "vision_feature_layer -2, strategy default, 4 image tokens" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["image_seq_length"] == 4
    assert config["text_config"]["vocab_size"] == 32064 and config["image_token_index"] == 32000

    model, processor = load_model(ours_clip, device="cpu")
    hf_model = LlavaForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    hf_processor = AutoProcessor.from_pretrained(str(out))
    assert hf_processor.image_processor.do_pad  # LLaVA-1.5's pad mode

    # the processor: chat template byte for byte, ids (incl. LLaVA's '▁' after <image>) and pixels
    prompt = hf_processor.apply_chat_template(hf_messages(), add_generation_prompt=True)
    conversation = [{"from": "human", "value": f"<image>\n{QUESTION}"}]
    assert prompt == render(conversation, "vicuna_v1", add_generation_prompt=True)
    pics = images(1)
    theirs = hf_processor(text=prompt, images=pics, return_tensors="pt")
    ours = processor.chat_batch([conversation], [pics])
    assert theirs["input_ids"].tolist() == ours["input_ids"].tolist()
    assert (theirs["pixel_values"] - ours["pixel_values"]).abs().max().item() <= 1e-6

    diff, ours_tokens, hf_tokens = compare(model, processor, hf_model, images_in=pics, max_new_tokens=12)
    assert diff <= TOL, diff
    assert ours_tokens == hf_tokens


def test_chat_template_renders_every_conversation_shape(ours_clip, tmp_path):
    """System message, history, several images, markers inside text, HF content lists or plain strings."""
    from transformers import AutoProcessor

    from mllm.interop.export_hf import export_checkpoint
    from mllm.interop.hf_processor import as_llava_json
    from mllm.templates import render

    out, _ = export_checkpoint(ours_clip, tmp_path / "exported", dtype="fp32")
    processor = AutoProcessor.from_pretrained(str(out))
    conversations = [
        hf_messages(),
        [{"role": "user", "content": "<image>\nFirst?"}, {"role": "assistant", "content": "A."},
         {"role": "user", "content": [{"type": "text", "text": "and"}, {"type": "image"}, {"type": "text", "text": "?"}]},
         {"role": "assistant", "content": "B."}, {"role": "user", "content": "Both <image> <image> now"}],
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "  spaced  <image>  "}],
        [{"role": "assistant", "content": "dropped, as LLaVA drops a leading answer"}, {"role": "user", "content": "Hi"}],
    ]
    for messages in conversations:
        for generation in (True, False):
            if not generation and messages[-1]["role"] == "user":
                messages = messages + [{"role": "assistant", "content": "Done."}]
            theirs = processor.apply_chat_template(messages, add_generation_prompt=generation)
            assert theirs == render(as_llava_json(messages), "vicuna_v1", add_generation_prompt=generation)
    with pytest.raises(Exception, match="alternate"):
        processor.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.parametrize("quantization", [None, "4bit"], ids=["lora", "qlora"])
def test_lora_checkpoints_are_merged(quantization, tiny_llm_dirs, spm_tokenizer_dir, ours_clip, tmp_path, compare):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from mllm import LoraSpec, TowerSpec, build_model, load_model, save_pretrained

    if quantization:
        pytest.importorskip("bitsandbytes")
    tower_dir = ours_clip.parent / "tower"
    torch.manual_seed(7)
    model, processor = build_model(str(tiny_llm_dirs("llama")), tower=TowerSpec(checkpoint=str(tower_dir), config=None,
                                                                               name="tiny-clip"),
                                   tokenizer=AutoTokenizer.from_pretrained(str(spm_tokenizer_dir)), dtype="fp32",
                                   quantization=quantization, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter: merging must matter
    ckpt = save_pretrained(model, processor, tmp_path / "ckpt")
    out = tmp_path / "exported"
    assert main(["export", str(ckpt), str(out), "--dtype", "fp32"]) == 0
    info = json.loads((out / "llm2clip_llava.json").read_text())
    assert info["merged_adapter_into"] == ("dequantized" if quantization else "original")

    served, processor = load_model(ckpt, device="cpu")  # as trained: the adapter on its (4-bit) base
    hf_model = LlavaForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    diff, ours_tokens, hf_tokens = compare(served, processor, hf_model, images_in=images(1))
    assert diff <= TOL, diff  # QLoRA: merged into the dequantised NF4 weights the 4-bit kernel computes with
    assert ours_tokens == hf_tokens


def test_round_trip_export_then_import(ours_clip, tmp_path, compare):
    from transformers import LlavaForConditionalGeneration

    from mllm import load_model
    from mllm.interop.export_hf import export_checkpoint
    from mllm.interop.importer import import_checkpoint

    exported, _ = export_checkpoint(ours_clip, tmp_path / "exported", dtype="fp32")
    back, _ = import_checkpoint(exported, tmp_path / "back")
    original = json.loads((ours_clip / "config.json").read_text())
    returned = json.loads((back / "config.json").read_text())
    for key in ("template", "image_aspect_ratio", "projector_type", "model_max_length"):
        assert returned[key] == original[key]
    assert returned["tower"]["name"] == "tiny-clip" and returned["tower"]["select_layer"] == -2
    model, processor = load_model(back, device="cpu")
    hf_model = LlavaForConditionalGeneration.from_pretrained(str(exported), dtype=torch.float32).eval()
    diff, ours_tokens, hf_tokens = compare(model, processor, hf_model, images_in=images(2),
                                           question="<image>\n<image>\nSame?")
    assert diff <= TOL and ours_tokens == hf_tokens


ISOLATED = textwrap.dedent('''
    import importlib.abc, json, sys
    OURS = {"mllm", "vision_tower", "projector", "demo"}

    class RefuseOurPackages(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in OURS:
                raise ImportError(f"{name} must not be needed to serve an export")
            return None

    sys.meta_path.insert(0, RefuseOurPackages())
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    directory, image, question, max_new_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    processor = AutoProcessor.from_pretrained(directory)
    model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=Image.open(image), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in OURS)
    print(json.dumps({"text": processor.decode(new, skip_special_tokens=True).strip(), "prompt": prompt,
                      "ours_imported": loaded}))
''')


@pytest.mark.slow
def test_export_answers_like_our_chat_in_an_isolated_process(ours_clip, tmp_path):
    from mllm.chat import load
    from mllm.interop.export_hf import export_checkpoint

    exported, _ = export_checkpoint(ours_clip, tmp_path / "exported", dtype="fp32")
    image = tmp_path / "photo.png"
    images(1)[0].save(image)
    script = tmp_path / "serve.py"
    script.write_text(ISOLATED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run([sys.executable, "-I", str(script), str(exported), str(image), QUESTION, "16"],
                          capture_output=True, text=True, check=False, env={**env, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ours_imported"] == []

    bot = load(ours_clip, quantization="none", dtype="fp32", device="cpu")
    ours = bot.chat(QUESTION, images=str(image), max_new_tokens=16)
    assert result["text"] == ours and ours


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("template", ["chat_template", "plain"])
def test_other_templates(template, ours_clip, tiny_llm_dirs, spm_tokenizer_dir, tmp_path):
    """The tokenizer's own template (behind our message normalisation) and stage 1's plain template."""
    from transformers import AutoProcessor, AutoTokenizer

    from mllm import TowerSpec, build_model, save_pretrained
    from mllm.interop.export_hf import export_checkpoint
    from mllm.interop.hf_processor import as_llava_json, probe_conversations
    from mllm.templates import render

    tokenizer = AutoTokenizer.from_pretrained(str(spm_tokenizer_dir))
    tokenizer.chat_template = CHATML
    model, processor = build_model(str(tiny_llm_dirs("llama")), tower=TowerSpec(checkpoint=str(ours_clip.parent / "tower"),
                                                                               config=None, name="tiny-clip"),
                                   tokenizer=tokenizer, dtype="fp32", template=template)
    ckpt = save_pretrained(model, processor, tmp_path / "ckpt")
    out, _ = export_checkpoint(ckpt, tmp_path / "exported", dtype="fp32")  # verifies every probe itself
    exported = AutoProcessor.from_pretrained(str(out))
    pic = images(1)[0]
    for messages in probe_conversations(template):
        conversation = as_llava_json(messages)
        prompt = exported.apply_chat_template(messages, add_generation_prompt=True)
        assert prompt == render(conversation, template, tokenizer, add_generation_prompt=True)
        n = prompt.count("<image>")
        theirs = exported(text=prompt, images=[pic] * n or None, add_special_tokens=template == "plain",
                          return_tensors="pt")
        assert theirs["input_ids"].tolist() == processor.chat_batch([conversation], [[pic] * n])["input_ids"].tolist()
