"""The splice, the loss, padding invariance and batched generation, each against an independent computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mllm import ImageCountError
from mllm.constants import IGNORE_INDEX


@pytest.fixture(scope="module")
def model_and_processor(make_tiny_model):
    model, processor = make_tiny_model("llama")
    model.eval()
    return model, processor


def _manual_embeds(model, input_ids, pixel_values):
    """Hand-built inputs_embeds: loop over positions, write image features patch by patch."""
    emb = model.llm.get_input_embeddings()
    feats = model.projector(model.vision_tower(pixel_values))  # [N, T, D]
    rows = []
    image_idx, patch_idx = 0, 0
    for b in range(input_ids.shape[0]):
        row = []
        for tok in input_ids[b].tolist():
            if tok == model.image_token_id:
                row.append(feats[image_idx, patch_idx])
                patch_idx += 1
                if patch_idx == feats.shape[1]:
                    image_idx, patch_idx = image_idx + 1, 0
            else:
                row.append(emb.weight[tok])
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_splice_equals_llm_on_hand_built_embeds(model_and_processor, make_images):
    model, processor = model_and_processor
    batch = processor(["<image>\nWhat is this? <image>", "Describe <image> please"], [make_images(2), make_images(1)],
                      padding_side="right")
    with torch.no_grad():
        ours = model(**batch, return_logits=True).logits
        embeds = _manual_embeds(model, batch["input_ids"], batch["pixel_values"])
        pos = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        ref = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=pos).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], ref[mask], rtol=1e-5, atol=1e-5)


def test_text_only_batch_equals_bare_llm(model_and_processor):
    model, processor = model_and_processor
    batch = processor(["Hello world, how are you?", "Short"], padding_side="right")
    assert batch["pixel_values"] is None
    with torch.no_grad():
        ours = model(**batch, return_logits=True).logits
        ref = model.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], ref[mask], rtol=1e-5, atol=1e-5)


def test_loss_equals_full_logits_cross_entropy(model_and_processor, make_images):
    model, processor = model_and_processor
    batch = processor(["<image>\nA red square.", "Just text here, longer one."], [make_images(1), None], padding_side="right")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    labels[:, :3] = IGNORE_INDEX
    with torch.no_grad():
        out = model(**batch, labels=labels, return_logits=True)
    shift_logits, shift_labels = out.logits[:, :-1], labels[:, 1:].clone()
    shift_labels[batch["input_ids"][:, 1:] == model.image_token_id] = IGNORE_INDEX
    ref = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    assert out.num_label_tokens == int((shift_labels != IGNORE_INDEX).sum())


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(model_and_processor, side, make_images):
    model, processor = model_and_processor
    short = "<image>\nWhat colour is it?"
    long = "<image>\nA much longer question that needs many more tokens than the other one does, truly."
    ims = make_images(2)
    alone = processor([short], [[ims[0]]], padding_side=side)
    batch = processor([short, long], [[ims[0]], [ims[1]]], padding_side=side)
    with torch.no_grad():
        a = model(**alone, return_logits=True).logits[0]
        b = model(**batch, return_logits=True).logits[0]
    b = b[batch["attention_mask"][0].bool()]
    assert b.shape == a.shape
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_batched_greedy_generation_equals_bs1(model_and_processor, make_images):
    """Exact in fp32 on the CPU, the claim this test makes. On CUDA in bf16 the kernels (cuBLAS tiles, bitsandbytes'
    4-bit kernels by row count, masked vs maskless attention) differ by batch shape, rounding differs, and a greedy
    token may flip where two logits nearly tie: scripts/gpu_check.py measures that agreement there instead."""
    model, processor = model_and_processor
    assert model.device.type == "cpu" and next(model.llm.parameters()).dtype == torch.float32
    prompts = [f"<image>\nQuestion number {i}: " + "word " * (i * 3) for i in range(8)]
    ims = make_images(8)
    singles = []
    for p, im in zip(prompts, ims):
        b = processor([p], [[im]])
        singles.append(model.generate(**b, max_new_tokens=12, min_new_tokens=12)[0].tolist())
    batch = processor(prompts, [[im] for im in ims], padding_side="left")
    batched = model.generate(**batch, max_new_tokens=12, min_new_tokens=12)
    assert [row.tolist() for row in batched] == singles


def test_generate_refuses_right_padding(model_and_processor):
    model, processor = model_and_processor
    batch = processor(["a", "much longer text"], padding_side="right")
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(**batch, max_new_tokens=2)


def test_sampling_and_streaming(model_and_processor, make_images):
    from threading import Thread

    from transformers import TextIteratorStreamer

    model, processor = model_and_processor
    batch = processor(["<image>\nTell me"], [make_images(1)])
    torch.manual_seed(1)
    s1 = model.generate(**batch, do_sample=True, temperature=0.9, top_p=0.9, max_new_tokens=8)
    torch.manual_seed(1)
    s2 = model.generate(**batch, do_sample=True, temperature=0.9, top_p=0.9, max_new_tokens=8)
    assert torch.equal(s1, s2)
    greedy = model.generate(**batch, max_new_tokens=10, min_new_tokens=10)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=model.generate, kwargs={**batch, "max_new_tokens": 10, "min_new_tokens": 10, "streamer": streamer})
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed == processor.decode(greedy[0], skip_special_tokens=True)


def test_stops_on_end_of_turn_token(model_and_processor, make_images):
    from mllm.llm import stop_token_ids

    model, processor = model_and_processor
    batch = processor(["<image>\nHi"], [make_images(1)])
    first = model.generate(**batch, max_new_tokens=1)[0, 0].item()
    # declare the first generated token an end-of-turn token: generation must stop right there
    out = model.generate(**batch, max_new_tokens=10, eos_token_id=[first], pad_token_id=0)
    assert out[0].tolist()[0] == first and out.shape[1] == 1
    assert processor.tokenizer.eos_token_id in stop_token_ids(processor.tokenizer, model.llm)


def test_image_count_errors(model_and_processor, make_images):
    model, processor = model_and_processor
    with pytest.raises(ImageCountError, match="2 '<image>' marker"):
        processor("<image> and <image>", make_images(1))
    with pytest.raises(ImageCountError, match="pass `images` as a list of 2"):
        processor(["<image>", "<image>"], make_images(1))
    batch = processor(["<image>\nok"], [make_images(1)])
    with pytest.raises(ImageCountError, match="placeholder tokens for 2 image"):
        model(batch["input_ids"], batch["attention_mask"], pixel_values=torch.cat([batch["pixel_values"]] * 2))
    with pytest.raises(ImageCountError, match="for 0 image"):
        model(batch["input_ids"], batch["attention_mask"], pixel_values=None)


def test_labels_outside_vocab_named(model_and_processor):
    model, processor = model_and_processor
    batch = processor(["plain text sample"])
    labels = batch["input_ids"].clone()
    labels[0, -1] = 10**6
    with pytest.raises(ValueError, match="outside the LLM vocabulary"):
        model(**batch, labels=labels)


def test_text_only_training_batch_keeps_projector_in_graph(model_and_processor):
    model, processor = model_and_processor
    model.train()
    try:
        batch = processor(["only text in this batch"], padding_side="right")
        out = model(**batch, labels=batch["input_ids"])
        out.loss.backward()
        assert all(p.grad is not None for p in model.projector.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_chat_batch_uses_training_template_and_matches_bs1(model_and_processor, make_images):
    from mllm.templates import encode

    model, processor = model_and_processor
    convs = [[{"from": "human", "value": "<image>\nWhat colour is it?"}],
             [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi."},
              {"from": "human", "value": "<image>\nAnd now, describe this picture in detail?"}]]
    ims = make_images(2)
    batch = processor.chat_batch(convs, [[ims[0]], [ims[1]]])
    for row, conv in enumerate(convs):
        expected = encode(conv, "vicuna_v1", processor.tokenizer, image_token_id=processor.image_token_id,
                          num_image_tokens=processor.num_image_tokens, add_generation_prompt=True).input_ids
        assert batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist() == expected
    out = model.generate(**batch, max_new_tokens=5, min_new_tokens=5)
    single = model.generate(**processor.chat_batch([convs[1]], [[ims[1]]]), max_new_tokens=5, min_new_tokens=5)
    assert out[1].tolist() == single[0].tolist()
    with pytest.raises(ImageCountError, match="1 '<image>' marker"):
        processor.chat_batch([convs[0]], [[]])


def test_generate_text_batched_equals_single_and_stops(model_and_processor, make_images):
    from mllm.generation import GenerationSettings, generate_text

    model, processor = model_and_processor
    convs = [[{"from": "human", "value": f"<image>\nQuestion {i}" + " more" * i}] for i in range(4)]
    ims = [[im] for im in make_images(4)]
    settings = GenerationSettings(max_new_tokens=6)
    batched = generate_text(model, processor, convs, ims, settings)
    singles = [generate_text(model, processor, [c], [im], settings)[0] for c, im in zip(convs, ims)]
    assert batched == singles and all(isinstance(t, str) for t in batched)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1).kwargs()
