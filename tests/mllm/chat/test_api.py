"""The Python chat API: answers equal an independent greedy decode, streaming equals non-streaming, every
message form gives the same prompt, bad input fails at the call, stop and failures never hang."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mllm.chat import ChatModel, load
from mllm.chat.api import IMAGE_ASPECT_RATIOS
from mllm.modeling import ImageCountError
from vision_tower import ImageLoadError

QUESTION = "What colour is the square?"


def _greedy_reference(bot, turns, images, max_new_tokens):
    """Greedy decoding by hand: full forward passes (no KV cache, no HF generate), argmax, stop at EOS."""
    proc = bot.processor
    ids = proc.encode_prompt(turns)
    pixels = proc.image_processor(images) if images else None
    stop = set(bot._stop_ids)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = bot.model(torch.tensor([ids + new]), pixel_values=pixels, return_logits=True).logits
            token = int(logits[0, -1].argmax())
            new.append(token)
            if token in stop:
                break
    return proc.decode(new, skip_special_tokens=True).strip()


def test_answer_equals_independent_greedy_decode(bot, make_images):
    image = make_images(1)[0]
    turns, images = bot.prepare(QUESTION, image)
    assert bot.chat(QUESTION, image, max_new_tokens=12) == _greedy_reference(bot, turns, images, 12)
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Red."},
               {"role": "user", "content": "Are you sure?"}]
    turns, images = bot.prepare(history, image)
    assert bot.chat(history, image, max_new_tokens=10) == _greedy_reference(bot, turns, images, 10)


def test_streaming_gives_the_same_text_as_one_call(bot, make_images):
    image = make_images(2)[1]
    full = bot.chat(QUESTION, image, max_new_tokens=24)
    stream = bot.chat(QUESTION, image, max_new_tokens=24, stream=True)
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == stream.text and stream.text.strip() == full
    assert stream.num_tokens <= 24
    expected = "length" if stream.num_tokens == 24 and stream._streamer.last_token not in bot._stop_ids else "stop"
    assert stream.finish_reason == expected


def test_every_message_form_gives_the_same_prompt(bot, image_files):
    path = str(image_files[0][0])
    forms = [
        (QUESTION, path),
        ([{"role": "user", "content": QUESTION}], [path]),
        ([{"from": "human", "value": f"<image>\n{QUESTION}"}], path),
        ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}], path),
        ([{"role": "user", "content": [{"type": "image", "image": path}, {"type": "text", "text": QUESTION}]}], None),
    ]
    prompts = []
    for messages, images in forms:
        turns, loaded = bot.prepare(messages, images)
        assert len(loaded) == 1 and loaded[0].size == (40, 30)
        prompts.append(bot.processor.encode_prompt(turns))
    assert all(p == prompts[0] for p in prompts)
    assert prompts[0].count(bot.processor.image_token_id) == bot.processor.num_image_tokens


def test_the_callers_messages_are_not_modified(bot, make_images):
    messages = [{"role": "user", "content": QUESTION}]
    bot.prepare(messages, make_images(1)[0])
    assert messages == [{"role": "user", "content": QUESTION}]


def test_bad_input_fails_at_the_call_not_in_the_worker(bot, image_files, make_images):
    paths, fake = image_files
    image = make_images(1)[0]
    with pytest.raises(ImageCountError, match="2 <image> marker"):
        bot.chat("<image> and <image>?", image, stream=True)
    with pytest.raises(ValueError, match="not both"):
        bot.chat([{"role": "user", "content": [{"type": "image", "image": image}]}], image)
    with pytest.raises(ImageLoadError) as err:
        bot.chat(QUESTION, fake, stream=True)
    assert err.value.reason == "not_image"
    with pytest.raises(ImageLoadError, match="missing"):
        bot.chat(QUESTION, paths[0].parent / "nope.png")
    with pytest.raises(TypeError, match="unknown generation setting"):
        bot.chat(QUESTION, image, temprature=0.5)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        bot.chat(QUESTION, image, temperature=-1)
    with pytest.raises(ValueError, match="image_aspect_ratio must be one of"):
        bot.chat(QUESTION, image, image_aspect_ratio="squash")
    with pytest.raises(ValueError, match="non-empty list"):
        bot.chat([], image)
    with pytest.raises(ValueError, match="unknown_role"):
        bot.chat([{"role": "robot", "content": "hi"}])


def test_image_aspect_ratio_selects_the_preprocessing_without_touching_the_trained_one(bot, monkeypatch, make_images):
    import mllm.chat.api as api

    seen = []
    real = api.generate_ids

    def spy(model, processor, *args, **kwargs):
        seen.append(processor.image_processor.image_aspect_ratio)
        return real(model, processor, *args, **kwargs)

    monkeypatch.setattr(api, "generate_ids", spy)
    image = make_images(1)[0]
    for mode in IMAGE_ASPECT_RATIOS:
        bot.chat(QUESTION, image, image_aspect_ratio=mode, max_new_tokens=2)
    bot.chat(QUESTION, image, max_new_tokens=2)
    assert seen == [*IMAGE_ASPECT_RATIOS, bot.image_aspect_ratio]
    assert bot.processor.image_processor.image_aspect_ratio == bot.image_aspect_ratio
    assert bot.processor_for("crop").tokenizer is bot.processor.tokenizer


def test_stop_ends_generation_within_a_token(bot, make_images):
    stream = bot.chat(QUESTION, make_images(1)[0], max_new_tokens=2000, stream=True)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 2:
            stream.stop()
    assert stream.finish_reason == "stopped"
    assert stream.num_tokens < 10
    assert not stream._thread.is_alive()


def test_abandoning_the_stream_stops_the_worker(bot, make_images):
    stream = bot.chat(QUESTION, make_images(1)[0], max_new_tokens=2000, stream=True)
    iterator = iter(stream)
    next(iterator)
    iterator.close()
    assert stream.stop_event.is_set() and not stream._thread.is_alive()
    assert stream.num_tokens < 50


def test_a_failing_generation_raises_in_the_consumer_instead_of_hanging(bot, monkeypatch, make_images):
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(bot.model, "generate", boom)
    stream = bot.chat(QUESTION, make_images(1)[0], stream=True)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="simulated"):
        list(stream)
    assert time.monotonic() - start < 10


def test_concurrent_chats_equal_sequential_ones(bot, make_images):
    """Threads share one model (as the demo's queue does): no answer may depend on the others."""
    images = make_images(4)
    questions = [f"{QUESTION} ({i})" for i in range(4)]
    sequential = [bot.chat(q, im, max_new_tokens=8) for q, im in zip(questions, images)]
    barrier = threading.Barrier(4)

    def one(i):
        barrier.wait()
        return "".join(bot.chat(questions[i], images[i], max_new_tokens=8, stream=True)).strip()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(4))) == sequential


def test_info_names_what_is_loaded(bot, chat_checkpoint):
    info = bot.info()
    assert info["model"] == str(chat_checkpoint)
    assert info["tower"] == "tiny-eva02" and info["template"] == "vicuna_v1"
    assert info["quantization"] == "none" and info["adapter"] is None
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["image_aspect_ratio"] == "pad" and info["num_image_tokens"] == bot.processor.num_image_tokens


def test_load_without_a_model_points_at_the_quickstart(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM2CLIP_LLAVA_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="quickstart"):
        load()


def test_qlora_checkpoint_is_served_on_its_4bit_base_unless_overridden(make_tiny_model, tmp_path, make_images):
    """`quantization="auto"` serves an adapter the way it was trained (NF4 on the CPU via bitsandbytes)."""
    pytest.importorskip("bitsandbytes")
    from mllm import LoraSpec, save_pretrained

    model, processor = make_tiny_model("llama", quantization="4bit", dtype=torch.float32,
                                       lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    save_pretrained(model, processor, tmp_path / "qlora")
    served = ChatModel.from_pretrained(tmp_path / "qlora")
    info = served.info()
    assert info["quantization"].startswith("4-bit NF4") and info["adapter"].startswith("QLoRA")
    image = make_images(1)[0]
    answer = served.chat(QUESTION, image, max_new_tokens=4)
    assert isinstance(answer, str)
    plain = ChatModel.from_pretrained(tmp_path / "qlora", quantization="none")
    assert plain.info()["quantization"] == "none"
