"""Chat-state rules: what the model sees vs what the reader sees, one image per context, busy/stop/regenerate."""
from __future__ import annotations

import pytest
from PIL import Image

from mllm.chat.session import ChatSession, ChatStateError, Exchange, ImageRef, Note
from mllm.templates import render

RED = Image.new("RGB", (8, 6), (255, 0, 0))
BLUE = Image.new("RGB", (8, 6), (0, 0, 255))


def _answer(session, text, finish="stop"):
    ex = session.pending
    ex.answer = text
    session.complete(ex, finish)
    return ex


def _notes(session, kind=None):
    return [i.text for i in session.items if isinstance(i, Note) and (kind is None or i.kind == kind)]


def test_image_marker_opens_first_user_turn_only_and_history_is_kept():
    s = ChatSession()
    s.set_image(RED, "red.png", "k-red")
    s.ask("What colour?")
    assert s.conversation() == ([{"from": "human", "value": "<image>\nWhat colour?"}], [RED])
    _answer(s, "  Red. ")
    s.ask("And the shape?")
    messages, images = s.conversation()
    assert messages == [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."},
                        {"from": "human", "value": "And the shape?"}]
    assert images == [RED]


def test_conversation_renders_exactly_as_the_vicuna_training_template():
    """The session's turns through the training template give LLaVA-1.5's prompt string, written out by hand."""
    s = ChatSession()
    s.set_image(RED, "red.png", "k")
    s.ask("Q1")
    _answer(s, "A1")
    s.ask("Q2")
    messages, _ = s.conversation()
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
    assert render(messages, "vicuna_v1", add_generation_prompt=True) == (
        f"{system} USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:")


def test_system_prompt_goes_first_and_the_marker_into_the_first_user_turn():
    s = ChatSession(system="Be brief.")
    s.set_image(RED, "red.png", "k")
    s.ask("Q")
    messages, _ = s.conversation()
    assert messages == [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nQ"}]


def test_failed_empty_and_errored_exchanges_are_not_sent_to_the_model():
    s = ChatSession()
    s.ask("first")
    _answer(s, "one")
    s.ask("second")
    s.fail(s.pending, "Generation failed: RuntimeError: boom")
    s.ask("third")
    _answer(s, "   ")  # nothing generated
    s.ask("fourth")
    _answer(s, "partial", finish="stopped")  # a stopped answer was seen by the reader: it stays
    s.ask("fifth")
    messages, images = s.conversation()
    assert [m["value"] for m in messages] == ["first", "one", "fourth", "partial", "fifth"]
    assert images == []
    assert "Generation failed: RuntimeError: boom" in _notes(s, "error")
    assert "The model returned an empty answer." in _notes(s)


def test_same_image_keeps_the_context_a_new_image_starts_a_new_one():
    s = ChatSession()
    assert s.set_image(RED, "red.png", "k-red")
    s.ask("Q1")
    _answer(s, "A1")
    assert not s.set_image(RED.copy(), "red-again.png", "k-red")  # same content key: same conversation
    s.ask("Q2")
    assert len(s.conversation()[0]) == 3
    _answer(s, "A2")
    assert s.set_image(BLUE, "blue.png", "k-blue")
    assert "New image blue.png (8×6)" in _notes(s)[-1]
    s.ask("Q3")
    assert s.conversation() == ([{"from": "human", "value": "<image>\nQ3"}], [BLUE])
    shown = [m["content"] for m in s.transcript() if m["role"] == "user"]
    assert shown[:2] == ["Q1", "Q2"] and shown[-1] == "Q3"  # the reader still sees the old turns


def test_removing_the_image_gives_a_text_only_context():
    s = ChatSession()
    s.set_image(RED, "red.png", "k")
    s.ask("Q1")
    _answer(s, "A1")
    assert s.set_image(None, "", "")
    assert not s.set_image(None, "", "")
    s.ask("Q2")
    assert s.conversation() == ([{"from": "human", "value": "Q2"}], [])


def test_one_answer_at_a_time():
    s = ChatSession()
    s.ask("Q1")
    for action in (lambda: s.ask("Q2"), lambda: s.set_image(RED, "r", "k"), s.regenerate):
        with pytest.raises(ChatStateError, match="being generated"):
            action()
    with pytest.raises(ChatStateError, match="empty"):
        ChatSession().ask("   ")


def test_typed_image_markers_are_not_treated_as_images():
    s = ChatSession()
    s.ask("what is <image> here?")
    assert s.conversation() == ([{"from": "human", "value": "what is  here?"}], [])


def test_regenerate_replaces_the_last_answer_and_its_notes():
    s = ChatSession()
    s.set_image(RED, "red.png", "k")
    s.ask("Q1")
    _answer(s, "A1")
    s.ask("Q2")
    _answer(s, "A2 cut", finish="length")
    assert _notes(s)[-1].startswith("The answer reached the max-new-tokens limit")
    old_event = s.stop_event
    old_event.set()
    ex = s.regenerate()
    assert ex.question == "Q2" and ex.pending and ex.answer == ""
    assert not isinstance(s.items[-1], Note)  # the cut-off notice went with the answer
    assert s.stop_event is not old_event and not s.stop_event.is_set()
    assert [m["value"] for m in s.conversation()[0]] == ["<image>\nQ1", "A1", "Q2"]


def test_regenerate_needs_an_answer_in_the_current_context():
    s = ChatSession()
    with pytest.raises(ChatStateError, match="no answer to regenerate"):
        s.regenerate()
    s.ask("Q1")
    _answer(s, "A1")
    s.set_image(RED, "red.png", "k")
    with pytest.raises(ChatStateError, match="no answer to regenerate"):
        s.regenerate()


def test_trim_drops_usable_history_keeps_the_image_and_notes_it_on_the_pending_turn():
    s = ChatSession()
    s.set_image(RED, "red.png", "k")
    s.ask("Q0")
    s.fail(s.pending, "boom")  # not history: trimming counts usable exchanges only
    for i in range(1, 4):
        s.ask(f"Q{i}")
        _answer(s, f"A{i}")
    s.ask("Q4")
    s.trim(2, 512, ("Q1", "Q2"))
    messages, images = s.conversation()
    assert [m["value"] for m in messages] == ["<image>\nQ3", "A3", "Q4"] and images == [RED]
    assert [n.text for n in s.pending.notes] == [
        'The conversation outgrew the model\'s context window (512 tokens): the 2 oldest turns ("Q1"; "Q2") are '
        "no longer sent to the model, the image still is."]
    with pytest.raises(ValueError, match="cannot trim 2 exchanges: the history holds 1"):
        s.trim(2)
    s.trim(1)
    assert s.conversation()[0] == [{"from": "human", "value": "<image>\nQ4"}]
    _answer(s, "A4")
    s.regenerate()
    assert s.pending.notes == []  # the next fit decides again


def test_a_replaced_image_lets_go_of_its_pixels_but_stays_in_the_transcript(tmp_path):
    s = ChatSession()
    s.set_image(RED, "red.png", "k-red", display=str(tmp_path / "red.png"))
    first = s.image
    s.set_image(BLUE, "blue.png", "k-blue", display=str(tmp_path / "blue.png"))
    assert first.image is None and first.size_text == "8×6"
    assert [m["content"]["alt_text"] for m in s.transcript() if isinstance(m["content"], dict)] == ["red.png", "blue.png"]
    s.close()
    assert s.image is None and s.items == [] and s.stop_event.is_set()


def test_restore_continues_a_saved_conversation_in_a_new_context():
    s = ChatSession()
    s.ask("old")
    _answer(s, "old answer")
    s.restore([("Q1", "A1"), ("Q2", "A2")], ImageRef(RED, "red.png", "k"), "Be brief.", label="conv.json")
    s.ask("Q3")
    messages, images = s.conversation()
    assert messages == [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nQ1"},
                        {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"},
                        {"from": "gpt", "value": "A2"}, {"from": "human", "value": "Q3"}]
    assert images == [RED]
    assert "Loaded conv.json: 2 turns about red.png (8×6). Ask a follow-up question." in _notes(s)


def test_stop_applies_to_the_pending_answer_only():
    s = ChatSession()
    assert not s.request_stop()
    s.ask("Q1")
    assert s.request_stop() and s.stop_event.is_set()
    _answer(s, "", finish="stopped")
    assert _notes(s)[-1] == "Stopped before any text was generated."
    s.ask("Q2")
    assert not s.stop_event.is_set()


def test_reset_keeps_the_image_stops_generation_and_ignores_late_results():
    s = ChatSession()
    s.set_image(RED, "red.png", "k", display="/uploads/red.png")
    s.ask("Q1")
    running = s.pending
    event = s.stop_event
    s.reset(keep_image=True)
    assert event.is_set() and running.finish == "stopped"
    assert s.transcript() == [{"role": "user", "content": {"path": "/uploads/red.png", "alt_text": "red.png"}}]
    running.answer = "late"
    s.complete(running, "stop")  # the generation finishing after the reset changes nothing
    s.fail(running, "late error")
    assert s.transcript() == [{"role": "user", "content": {"path": "/uploads/red.png", "alt_text": "red.png"}}]
    s.ask("Q2")
    assert s.conversation() == ([{"from": "human", "value": "<image>\nQ2"}], [RED])
    s.reset(keep_image=False)
    assert s.image is None and s.transcript() == []


def test_transcript_shows_notes_questions_and_answers_in_order():
    s = ChatSession()
    s.set_image(RED, "red.png", "k")
    s.ask("Q1")
    assert s.transcript()[-1] == {"role": "user", "content": "Q1"}  # no empty bubble while waiting
    s.pending.answer = "partial"
    assert s.transcript()[-1] == {"role": "assistant", "content": "partial"}
    s.complete(s.pending, "stop")
    s.error("bad upload")
    assert [m["content"] for m in s.transcript()] == ["ℹ️ Image red.png (8×6) loaded.", "Q1", "partial", "⚠️ bad upload"]


def test_complete_rejects_unknown_finish_reasons():
    s = ChatSession()
    s.ask("Q")
    with pytest.raises(ValueError, match="finish must be one of"):
        s.complete(s.pending, "done")
    assert isinstance(s.pending, Exchange)
