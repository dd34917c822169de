"""Driving a session's turn: the answer is the API's answer, history is trimmed to the context window,
stop-before-start and failures are recorded in the session instead of raised."""
from __future__ import annotations

import pytest

from mllm.chat import ChatSession, run_turn
from mllm.generation import GenerationSettings

SETTINGS = GenerationSettings(max_new_tokens=6, temperature=0.0)


def _session(make_images):
    s = ChatSession()
    s.set_image(make_images(1)[0], "red.png", "k")
    return s


def test_turn_streams_the_same_answer_as_the_api(bot, make_images):
    s = _session(make_images)
    s.ask("What colour?")
    messages, images = s.conversation()
    pieces = list(run_turn(bot, s, SETTINGS))
    ex = s.exchanges[-1]
    assert ex.finish in ("stop", "length") and ex.answer == "".join(pieces).strip()
    assert ex.answer == bot.chat(messages, images, settings=SETTINGS)
    s.ask("And the shape?")
    messages, _ = s.conversation()
    assert [m["value"] for m in messages][1] == ex.answer  # the streamed answer is the history
    list(run_turn(bot, s, SETTINGS))
    assert not s.busy


def test_a_question_longer_than_the_context_is_an_error_in_the_chat(bot, make_images, monkeypatch):
    s = _session(make_images)
    s.ask("word " * 50)
    monkeypatch.setattr(bot.processor, "model_max_length", 20)
    assert list(run_turn(bot, s, SETTINGS)) == []
    assert s.exchanges[-1].finish == "error"
    assert "question is too long" in s.items[-1].text and s.items[-1].kind == "error"


def test_stop_before_the_start_generates_nothing(bot, make_images, monkeypatch):
    s = _session(make_images)
    s.ask("Q")
    s.request_stop()
    monkeypatch.setattr(bot, "chat", lambda *a, **k: pytest.fail("generation started after a stop"))
    assert list(run_turn(bot, s, SETTINGS)) == []
    assert s.exchanges[-1].finish == "stopped"


def test_a_failure_is_reported_with_its_real_text_and_the_chat_goes_on(bot, make_images, monkeypatch):
    s = _session(make_images)
    s.ask("Q")

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(bot, "chat", broken)
    list(run_turn(bot, s, SETTINGS))
    assert s.exchanges[-1].finish == "error"
    assert s.items[-1].text == "Generation failed: RuntimeError: CUDA error: device-side assert triggered"
    monkeypatch.undo()
    s.ask("Q again")
    assert s.conversation()[0] == [{"from": "human", "value": "<image>\nQ again"}]  # the failed turn is not history
    list(run_turn(bot, s, SETTINGS))
    assert s.exchanges[-1].finish in ("stop", "length")


def test_a_closed_consumer_stops_the_generation(bot, make_images):
    s = _session(make_images)
    s.ask("Q")
    turn = run_turn(bot, s, GenerationSettings(max_new_tokens=2000))
    next(turn)
    turn.close()
    assert s.exchanges[-1].finish == "stopped" and s.stop_event.is_set()
