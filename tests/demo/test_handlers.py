"""The demo's event handlers without a browser: uploads, questions, streaming, regenerate, stop, clear, mode."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from demo.examples import EXAMPLES, make_examples
from demo.handlers import DemoBackend, chat_messages, message_parts
from mllm.chat.session import ChatSession
from mllm.generation import GenerationSettings

SETTINGS = GenerationSettings(max_new_tokens=8, temperature=0.0, top_p=0.7)


@pytest.fixture
def backend(demo_bot, tmp_path):
    # every piece, so steps are countable
    return DemoBackend(demo_bot, SETTINGS, min_update_interval=0.0, files_dir=tmp_path / "files")


def test_updates_are_throttled(demo_bot, tmp_path):
    Image.new("RGB", (20, 20), (0, 0, 0)).save(tmp_path / "black.png")
    _, _, _, session, _ = DemoBackend(demo_bot, SETTINGS).submit(_msg("Q", tmp_path / "black.png"), "pad", None)
    slow = DemoBackend(demo_bot, SETTINGS, min_update_interval=60.0)
    steps = list(slow.generate("pad", 0.0, 0.7, 16, session))
    assert len(steps) == 2  # the first piece and the final state
    assert session.exchanges[-1].answer in _texts(steps[-1][0])


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    d = tmp_path_factory.mktemp("uploads")
    Image.new("RGB", (60, 40), (200, 20, 20)).save(d / "red.png")
    Image.new("RGB", (30, 50), (20, 20, 200)).save(d / "blue.png")
    (d / "notes.txt").write_text("hello")
    (d / "empty.png").write_bytes(b"")
    Image.new("1", (9000, 9000)).save(d / "huge.png")  # 81 MP, a few kB on disk
    (d / "drawing.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")  # EPS
    return d


def _msg(text, path=None):
    return {"text": text, "files": [] if path is None else [{"path": str(path), "orig_name": path.name}]}


def _texts(chat):
    return [part["text"] if "text" in part else f"[image {part['alt_text']}]" for m in chat for part in m["content"]]


def _submit(backend, message, mode, session):
    chat, box, view, session, status = backend.submit(message, mode, session)
    assert f"data-state='{'waiting' if session.busy else 'idle'}'" in status
    return chat, box, view, session


def _generate(backend, session, mode="pad", temperature=0.0, top_p=0.7, max_new_tokens=8):
    steps = list(backend.generate(mode, temperature, top_p, max_new_tokens, session))
    assert f"data-state='idle' data-finished='{session.finished}'" in steps[-1][2]
    if len(steps) > 2:
        assert "data-state='generating'" in steps[1][2]
    return steps[-1][0], len(steps)


def test_ask_about_an_upload_and_stream_the_answer(backend, demo_bot, uploads):
    chat, box, view, session = _submit(backend, _msg("What colour?", uploads / "red.png"), "pad", None)
    assert box == {"text": "", "files": []}
    assert _texts(chat) == ["[image red.png]", "ℹ️ Image red.png (60×40) loaded.", "What colour?"]
    shown = chat[0]["content"][0]["path"]
    assert chat[0]["role"] == "user" and shown.startswith(str(backend.files_dir / session.id))
    assert np.array_equal(np.asarray(Image.open(shown).convert("RGB")), np.asarray(Image.open(uploads / "red.png")))
    assert view.size[0] >= 224 and view.size[0] % demo_bot.processor.image_processor.image_size == 0
    chat, steps = _generate(backend, session)
    answer = demo_bot.chat("What colour?", uploads / "red.png", max_new_tokens=8)
    assert chat[3] == {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    assert steps > 3  # streamed: one update per text piece
    # a follow-up without attachment continues about the same image
    chat, _, _, session = _submit(backend, _msg("Sure?"), "pad", session)
    chat, _ = _generate(backend, session)
    expected = demo_bot.chat([{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": answer},
                              {"role": "user", "content": "Sure?"}], uploads / "red.png", max_new_tokens=8)
    texts = _texts(chat)
    assert texts[texts.index("Sure?") + 1] == expected


@pytest.mark.parametrize("name, reason", [("notes.txt", "it is not an image"), ("empty.png", "the file is empty"),
                                          ("huge.png", "the image is too large (9000x9000"),
                                          ("drawing.png", "format EPS (by its first bytes) is not accepted")])
def test_bad_uploads_are_explained_in_the_chat_and_the_question_is_kept(backend, uploads, name, reason):
    chat, box, view, session = _submit(backend, _msg("What is it?", uploads / name), "pad", None)
    assert box == {"text": "What is it?", "files": []}
    assert view is None and not session.busy
    texts = _texts(chat)
    assert texts[0].startswith(f"⚠️ Cannot use {name}: {reason}")
    assert texts[1].startswith("ℹ️ Your question was not sent")
    # the page carries on: a good image works next
    chat, _, _, session = _submit(backend, _msg("What is it?", uploads / "red.png"), "pad", session)
    assert session.busy


def test_regenerate_replaces_the_answer(backend, uploads):
    _, _, _, session = _submit(backend, _msg("Q", uploads / "red.png"), "pad", None)
    _generate(backend, session)
    first = session.exchanges[-1].answer
    chat, session, status = backend.regenerate(session)
    assert "data-state='waiting'" in status
    assert session.busy and _texts(chat)[-1] == "Q"
    chat, _ = _generate(backend, session, temperature=1.0)
    assert len(session.exchanges) == 1 and _texts(chat).count("Q") == 1
    assert session.exchanges[-1].answer != first  # a fresh sample (random 32k vocabulary)


def test_busy_session_refuses_a_second_question_and_stop_works_while_queued(backend, uploads):
    _, _, _, session = _submit(backend, _msg("Q1", uploads / "red.png"), "pad", None)
    chat, box, _, session = _submit(backend, _msg("Q2"), "pad", session)
    assert box["text"] == "Q2" and _texts(chat)[-1].startswith("⚠️ An answer is still being generated")
    backend.stop(session)  # before the queued generation starts
    chat, _ = _generate(backend, session)
    assert session.exchanges[-1].finish == "stopped" and _texts(chat)[-1] == "ℹ️ Stopped before any text was generated."


def test_stop_mid_stream_keeps_the_partial_answer(backend, uploads):
    _, _, _, session = _submit(backend, _msg("Q", uploads / "red.png"), "pad", None)
    stream = backend.generate("pad", 0.0, 0.7, 2000, session)
    for step, _ in enumerate(stream):
        if step == 3:
            backend.stop(session)
    ex = session.exchanges[-1]
    assert ex.finish == "stopped" and ex.answer and _texts(chat_messages(session))[-1] == "ℹ️ Stopped."


def test_clear_during_generation_empties_the_chat_but_keeps_the_image(backend, uploads):
    _, _, _, session = _submit(backend, _msg("Q", uploads / "red.png"), "pad", None)
    stream = backend.generate("pad", 0.0, 0.7, 2000, session)
    next(stream)
    next(stream)
    chat, box, session, status = backend.clear(session)
    assert "data-state='idle'" in status
    assert _texts(chat) == ["[image red.png]"] and box == {"text": "", "files": []}
    final = list(stream)[-1][0]
    assert _texts(final) == ["[image red.png]"]  # the stopped generation leaves nothing behind
    _submit(backend, _msg("Again"), "pad", session)
    assert session.conversation("pad")[0] == [{"from": "human", "value": "<image>\nAgain"}]


def test_new_image_restarts_the_conversation(backend, uploads):
    _, _, _, session = _submit(backend, _msg("Q1", uploads / "red.png"), "pad", None)
    _generate(backend, session)
    chat, _, _, session = _submit(backend, _msg("Q2", uploads / "blue.png"), "pad", session)
    assert "New image blue.png (30×50): the conversation starts again" in _texts(chat)[-2]
    assert session.conversation("pad")[0] == [{"from": "human", "value": "<image>\nQ2"}]


def test_mode_change_updates_what_the_model_sees(backend, demo_bot, uploads):
    _, _, pad_view, session = _submit(backend, _msg("", uploads / "blue.png"), "pad", None)
    assert not session.busy  # an image alone asks nothing
    chat, crop_view, session = backend.image_aspect_ratio_changed("crop", session)
    assert not any("preprocessing is now" in t for t in _texts(chat))  # nothing asked yet: no notice
    size = demo_bot.processor.image_processor.image_size
    pad_px = np.asarray(pad_view.resize((size, size), Image.Resampling.NEAREST))
    crop_px = np.asarray(crop_view.resize((size, size), Image.Resampling.NEAREST))
    assert (crop_px[..., 2] > 150).all()  # a blue image centre-cropped: blue everywhere
    assert (pad_px[:, 0, 2] < 150).all()  # a portrait image padded left/right with the mean colour
    _submit(backend, _msg("Q"), "crop", session)
    _generate(backend, session, mode="crop")
    chat, _, _ = backend.image_aspect_ratio_changed("resize", session)
    assert _texts(chat)[-1] == "ℹ️ Image preprocessing is now resize (the model was trained with pad); it applies " \
                               "from the next answer."


def test_remove_image_gives_text_only_chat(backend, uploads):
    _, _, _, session = _submit(backend, _msg("", uploads / "red.png"), "pad", None)
    chat, view, session = backend.remove_image("pad", session)
    assert view is None and _texts(chat)[-1].startswith("ℹ️ Image removed")
    _submit(backend, _msg("Hi"), "pad", session)
    assert session.conversation("pad") == ([{"from": "human", "value": "Hi"}], [])


def test_invalid_settings_are_reported_not_raised(backend, uploads):
    _, _, _, session = _submit(backend, _msg("Q", uploads / "red.png"), "pad", None)
    chat, _ = _generate(backend, session, max_new_tokens=0)
    assert _texts(chat)[-1].startswith("⚠️ Invalid generation settings: max_new_tokens must be >= 1")
    assert not session.busy


def test_message_parts_accepts_every_form():
    assert message_parts(None) == ("", [])
    assert message_parts("hi") == ("hi", [])
    assert message_parts({"text": "hi", "files": [{"path": "/a.png"}]}) == ("hi", [{"path": "/a.png"}])


def test_examples_are_drawn_by_the_project(tmp_path):
    examples = make_examples(tmp_path)
    assert len(examples) == len(EXAMPLES)
    for path, question in examples:
        image = Image.open(path)
        assert image.size == (64, 64) and question.strip()
        colours = {c for c in image.getdata() if c != (255, 255, 255)}
        assert colours  # something is drawn
    again = make_examples(tmp_path / "again")
    assert [open(p, "rb").read() for p, _ in again] == [open(p, "rb").read() for p, _ in examples]  # deterministic


def test_an_upload_is_kept_as_the_towers_views_only(backend, demo_bot, tmp_path):
    Image.effect_mandelbrot((1800, 1200), (-2, -1, 1, 1), 60).convert("RGB").save(tmp_path / "photo.png")
    _, _, view, session = _submit(backend, _msg("", tmp_path / "photo.png"), "crop", None)
    ref = session.image
    assert ref.image is None and ref.size == (1800, 1200)  # the decoded original is not kept
    original = Image.open(tmp_path / "photo.png").convert("RGB")
    for mode, kept in ref.views.items():  # each view gives the tower the original's exact pixels
        processor = demo_bot.processor_for(mode).image_processor
        assert processor.prepare(kept).equal(processor.prepare(original))
    assert Image.open(ref.display).size == (512, 341)  # the chat shows a small copy
    assert np.array_equal(np.asarray(view.resize(ref.views["crop"].size, Image.Resampling.NEAREST)),
                          np.asarray(ref.views["crop"]))  # "what the model sees" is the crop view
    _submit(backend, _msg("Q"), "crop", session)
    _generate(backend, session, mode="crop")
    assert session.exchanges[-1].answer == demo_bot.chat("Q", original, max_new_tokens=8, image_aspect_ratio="crop")


def test_the_pixel_cap_refuses_before_decoding(demo_bot, uploads, tmp_path):
    capped = DemoBackend(demo_bot, SETTINGS, files_dir=tmp_path, max_image_pixels=2000)
    chat, box, _, session, _ = capped.submit(_msg("Q", uploads / "red.png"), "pad", None)  # 60x40 = 2400 pixels
    assert _texts(chat)[0] == "⚠️ Cannot use red.png: the image is too large (60x40 = 2400 pixels > 2000). " \
                              "Scale it down and try again."
    assert session.image is None and box["text"] == "Q"


def test_an_expired_session_is_told_and_released_sessions_leave_no_files(backend, uploads):
    _, _, _, session = _submit(backend, _msg("Q", uploads / "red.png"), "pad", None)
    folder = backend.files_dir / session.id
    assert any(folder.iterdir())
    backend.release(session)  # what gr.State's time_to_live does to an idle session
    assert not folder.exists() and session.image is None and session.stop_event.is_set()
    shown = [{"role": "user", "content": [{"type": "text", "text": "Q"}]}]
    chat, _, _, fresh, _ = backend.submit(_msg("Sure?"), "pad", None, shown)
    assert _texts(chat)[0].startswith("ℹ️ This conversation was idle for more than 60 minutes")
    assert fresh.conversation()[0] == [{"from": "human", "value": "Sure?"}]


def test_save_and_load_continue_the_same_conversation(backend, demo_bot, uploads, tmp_path):
    _, _, _, session = _submit(backend, _msg("What colour?", uploads / "red.png"), "pad", None)
    _generate(backend, session)
    chat, saved, session = backend.save(session)
    assert saved.endswith(".zip") and saved.startswith(str(backend.files_dir / session.id))
    _, _, _, other = _submit(backend, _msg("", uploads / "blue.png"), "pad", None)  # another tab, busy elsewhere
    chat, view, other, status = backend.load({"path": saved, "orig_name": "conv.zip"}, "pad", other)
    assert "ℹ️ Loaded conv.zip: 1 turn about red.png (60×40). Ask a follow-up question." in _texts(chat)
    assert view is not None and "data-state='idle'" in status
    _submit(backend, _msg("Sure?"), "pad", session)
    _submit(backend, _msg("Sure?"), "pad", other)
    (m1, i1), (m2, i2) = session.conversation("pad"), other.conversation("pad")
    assert m1 == m2 and np.array_equal(np.asarray(i1[0]), np.asarray(i2[0]))


def test_loading_refuses_server_paths_and_bad_files(backend, uploads, tmp_path):
    import json

    record = {"image": str(uploads / "red.png"), "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                                   {"from": "gpt", "value": "A"}]}
    (tmp_path / "paths.json").write_text(json.dumps(record))
    chat, _, session, _ = backend.load({"path": str(tmp_path / "paths.json"), "orig_name": "paths.json"}, "pad", None)
    assert _texts(chat)[-1].startswith("⚠️ Cannot load paths.json: it names the image") and session.image is None
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really a zip")
    chat, _, session, _ = backend.load({"path": str(tmp_path / "junk.zip"), "orig_name": "junk.zip"}, "pad", session)
    assert _texts(chat)[-1].startswith("⚠️ Cannot load junk.zip")
    chat, _, session = backend.save(ChatSession())
    assert _texts(chat)[-1].startswith("⚠️ There is nothing to save yet")
