"""Saved conversations are LLaVA records (the training template encodes them as samples) and load back into the
same conversation; bad files are refused with the reason, never half-loaded."""
from __future__ import annotations

import json
import zipfile

import pytest
from PIL import Image

from mllm.chat.conversation_file import ConversationFileError, conversation_record, read_conversation, save_conversation
from mllm.chat.images import open_image
from mllm.chat.session import ChatSession, ImageRef
from mllm.errors import UserError

RED = Image.new("RGB", (12, 9), (255, 0, 0))


def _chat(image_path=None, system=None, turns=3):
    s = ChatSession(system=system)
    if image_path is not None:
        image, key = open_image(image_path)
        s.set_image(image, str(image_path), key, source=str(image_path))
    for i in range(turns):
        s.ask(f"Q{i}?")
        s.pending.answer = f"A{i}."
        s.complete(s.pending, "stop")
    s.ask("failed one")
    s.fail(s.pending, "boom")  # not part of the conversation
    return s


def _restore(saved):
    s = ChatSession()
    image = None
    if saved.image_source is not None:
        pixels, key = open_image(saved.image_source)
        image = ImageRef(pixels, saved.image_name, key)
    s.restore(saved.exchanges, image, saved.system, label="file")
    return s


def test_record_is_a_llava_sample_the_training_template_encodes(tmp_path, bot):
    from mllm.templates import encode

    RED.save(tmp_path / "red.png")
    record = conversation_record(_chat(tmp_path / "red.png"))
    assert set(record) == {"id", "image", "conversations"}
    assert record["conversations"] == [
        {"from": "human", "value": "<image>\nQ0?"}, {"from": "gpt", "value": "A0."},
        {"from": "human", "value": "Q1?"}, {"from": "gpt", "value": "A1."},
        {"from": "human", "value": "Q2?"}, {"from": "gpt", "value": "A2."}]
    proc = bot.processor
    encoded = encode(record["conversations"], proc.template, proc.tokenizer, image_token_id=proc.image_token_id,
                     num_image_tokens=proc.num_image_tokens)
    assert encoded.num_images == 1 and any(label != -100 for label in encoded.labels)


@pytest.mark.parametrize("suffix", [".json", ".zip"])
def test_save_and_load_round_trip_gives_the_same_conversation(tmp_path, suffix):
    RED.save(tmp_path / "red.png")
    original = _chat(tmp_path / "red.png", system="Be brief.")
    path = save_conversation(original, tmp_path / f"chat{suffix}")
    saved = read_conversation(path)
    if suffix == ".json":
        assert json.loads(path.read_text())["image"] == "red.png"  # relative to the JSON's folder
        elsewhere = save_conversation(original, tmp_path / "out" / "chat.json")
        assert json.loads(elsewhere.read_text())["image"] == str((tmp_path / "red.png").resolve())
    else:
        assert sorted(zipfile.ZipFile(path).namelist()) == ["conversation.json", "red.png"]
    restored = _restore(saved)
    original.ask("Next?")
    restored.ask("Next?")
    (m1, i1), (m2, i2) = original.conversation(), restored.conversation()
    assert m1 == m2 and list(i1[0].getdata()) == list(i2[0].getdata())
    assert saved.id == original.id and saved.system == "Be brief."


def test_an_image_without_a_file_is_written_next_to_the_json(tmp_path):
    s = ChatSession()
    s.set_image(RED, "upload.jpg", "k")  # a demo upload: no user file to point at
    s.ask("Q?")
    s.pending.answer = "A."
    s.complete(s.pending, "stop")
    path = save_conversation(s, tmp_path / "chat.json")
    assert json.loads(path.read_text())["image"] == "chat.png"
    saved = read_conversation(path)
    assert saved.image_path == tmp_path / "chat.png"
    assert list(open_image(saved.image_path)[0].getdata()) == list(RED.getdata())


def test_text_only_and_llava_list_files_load(tmp_path):
    path = save_conversation(_chat(turns=1), tmp_path / "t.json")
    assert "image" not in json.loads(path.read_text())
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"id": "x", "image": "coco/1.jpg", "conversations": [
        {"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A cat."}]}]))
    saved = read_conversation(listed)
    assert saved.exchanges == [("What is it?", "A cat.")] and saved.image_path == tmp_path / "coco/1.jpg"


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not valid JSON"),
    ("[]", "it holds 0 conversations"),
    ('{"id": 1}', "not a LLaVA conversation record"),
    ('{"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}]}', "must alternate"),
    ('{"conversations": [{"from": "human", "value": "q"}]}', "must alternate"),
    ('{"conversations": [{"from": "robot", "value": "q"}, {"from": "gpt", "value": "a"}]}', "turn 0 must be"),
    ('{"conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}]}', 'no "image"'),
    ('{"image": "a.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image>"}]}',
     "may appear once, in the first question"),
    ('{"image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}',
     "one image per conversation"),
])
def test_bad_files_are_refused_with_the_reason(tmp_path, content, reason):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConversationFileError, match=reason) as err:
        read_conversation(path)
    assert isinstance(err.value, UserError) and "bad.json" in str(err.value)


def test_bad_zips_and_paths(tmp_path):
    with pytest.raises(ConversationFileError, match="no such file"):
        read_conversation(tmp_path / "missing.json")
    with zipfile.ZipFile(tmp_path / "noimage.zip", "w") as bundle:
        bundle.writestr("conversation.json", json.dumps({"image": "x.png", "conversations": [
            {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}))
    with pytest.raises(ConversationFileError, match="it has no x.png"):
        read_conversation(tmp_path / "noimage.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as bundle:
        bundle.writestr("other.txt", "x")
    with pytest.raises(ConversationFileError, match="it has no conversation.json"):
        read_conversation(tmp_path / "empty.zip")
    with pytest.raises(ConversationFileError, match="must end in .json or .zip"):
        save_conversation(_chat(), tmp_path / "chat.txt")
    with pytest.raises(ConversationFileError, match="nothing to save yet"):
        save_conversation(ChatSession(), tmp_path / "chat.json")
