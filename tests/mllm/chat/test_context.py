"""The context budget: the answer gets min(max_new_tokens, room left), history is trimmed only when the prompt
leaves less than the minimal reserve, the image always stays, and the API, the session and the demo share it."""
from __future__ import annotations

import pytest

from mllm.chat import ChatSession, run_turn
from mllm.chat.context import ContextOverflowError, answer_reserve, default_max_new_tokens, fit_conversation
from mllm.chat.session import Note
from mllm.generation import GenerationSettings


def words(turns):
    """A stand-in token counter: one token per word, 10 per image marker, 2 per turn."""
    return sum(len(t["value"].replace("<image>", "").split()) + 10 * t["value"].count("<image>") + 2 for t in turns)


def conversation(n_history: int, image: bool = True):
    turns = []
    for i in range(n_history):
        turns += [{"from": "human", "value": f"question {i} w w w"}, {"from": "gpt", "value": f"answer {i} w w w"}]
    turns.append({"from": "human", "value": "the last question"})
    if image:
        turns[0] = {"from": "human", "value": "<image>\n" + turns[0]["value"]}
    return turns


def test_defaults_follow_the_context_window():
    assert default_max_new_tokens(2048) == 512  # LLaVA-1.5's window: LLaVA's own demo default
    assert default_max_new_tokens(512) == 128  # the quickstart
    assert default_max_new_tokens(32768) == 1024 and default_max_new_tokens(40) == 16
    assert default_max_new_tokens(None) == 512
    assert answer_reserve(512, 512) == 64 and answer_reserve(512, 10) == 10


def test_everything_is_kept_when_it_fits_and_the_answer_gets_the_room_left():
    turns = conversation(4)
    length = words(turns)  # 4 exchanges + image + the question: 71 tokens
    fit = fit_conversation(turns, words, context_length=120, max_new_tokens=512)
    assert fit.turns == turns and fit.dropped == 0  # a long max_new_tokens does not push history out
    assert fit.prompt_tokens == length and fit.max_new_tokens == 120 - length
    assert fit.limited_by_context(512) and not fit.limited_by_context(120 - length)
    fit = fit_conversation(turns, words, context_length=120, max_new_tokens=8)
    assert fit.max_new_tokens == 8 and fit.dropped == 0


def test_history_is_trimmed_oldest_first_only_below_the_reserve_and_the_image_moves():
    turns = conversation(4)  # 71 tokens; each exchange after the first is 14
    fit = fit_conversation(turns, words, context_length=80, max_new_tokens=80)  # reserve 10: 73 + 10 > 80
    assert fit.dropped == 1 and fit.dropped_questions == ("question 0 w w w",)
    assert fit.turns[0] == {"from": "human", "value": "<image>\nquestion 1 w w w"}  # the image stays, first
    assert fit.turns[1:] == turns[3:]
    assert fit.prompt_tokens == 57 and fit.max_new_tokens == 80 - 57
    fit = fit_conversation(turns, words, context_length=40, max_new_tokens=80)  # reserve 5
    assert [t["value"] for t in fit.turns] == ["<image>\nquestion 3 w w w", "answer 3 w w w", "the last question"]
    assert fit.dropped == 3
    assert sum(t["value"].count("<image>") for t in fit.turns) == 1


def test_every_image_marker_survives_in_order_and_the_system_turn_stays():
    turns = [{"from": "system", "value": "be brief"}, {"from": "human", "value": "<image>\nfirst"},
             {"from": "gpt", "value": "a"}, {"from": "human", "value": "<image>\nsecond"},
             {"from": "gpt", "value": "b"}, {"from": "human", "value": "third"}]
    fit = fit_conversation(turns, words, context_length=30, max_new_tokens=4)
    assert fit.dropped == 2
    assert fit.turns == [turns[0], {"from": "human", "value": "<image>\n<image>\nthird"}]


def test_a_question_that_cannot_fit_alone_is_an_error_and_one_that_barely_fits_gets_what_is_left():
    turns = conversation(2)
    alone = words([{"from": "human", "value": "<image>\nthe last question"}])
    with pytest.raises(ContextOverflowError, match=f"prompt has {alone} tokens .* context holds {alone}"):
        fit_conversation(turns, words, context_length=alone, max_new_tokens=50)
    fit = fit_conversation(turns, words, context_length=alone + 3, max_new_tokens=50)
    assert fit.dropped == 2 and fit.max_new_tokens == 3
    with pytest.raises(ValueError, match="must end with a user turn"):
        fit_conversation(turns[:-1], words, context_length=100, max_new_tokens=5)


def test_unknown_context_sends_everything():
    turns = conversation(30)
    fit = fit_conversation(turns, words, context_length=None, max_new_tokens=7)
    assert fit.turns == turns and fit.max_new_tokens == 7


# ---------------------------------------------------------------------- the API, with the real template
def _history(n):
    messages = []
    for i in range(n):
        messages += [{"role": "user", "content": f"Question number {i} about the picture?"},
                     {"role": "assistant", "content": f"Answer number {i}, which is rather long to take some room."}]
    return messages + [{"role": "user", "content": "Last one?"}]


def test_api_answer_budget_is_the_room_left_and_history_is_kept(bot, make_images, monkeypatch):
    image = make_images(1)[0]
    messages = _history(3)
    length = bot.prompt_length(messages, [image])
    room = length // 4  # more than the minimal reserve (1/8 of the window): nothing needs to go
    monkeypatch.setattr(bot.processor, "model_max_length", length + room)
    fit = bot.fit(messages, [image], max_new_tokens=512)
    assert fit.dropped == 0 and fit.max_new_tokens == room
    stream = bot.chat(messages, image, stream=True, max_new_tokens=512, temperature=0.0)
    text = stream.until_done()
    assert stream.fit.dropped == 0 and stream.num_tokens <= room
    assert text == bot.chat(messages, image, max_new_tokens=room, temperature=0.0)  # the same prompt, all turns


def test_api_trims_like_an_independent_trim_and_keeps_the_image(bot, make_images, monkeypatch, caplog):
    image = make_images(1)[0]
    messages = _history(3)
    kept = [{"role": "user", "content": "<image>\n" + messages[4]["content"]}, *messages[5:]]
    budget = 8
    limit = bot.prompt_length(kept, [image]) + budget  # exactly room for the last exchange + the question
    monkeypatch.setattr(bot.processor, "model_max_length", limit)
    expected = bot.chat(kept, image, max_new_tokens=budget, temperature=0.0)
    with caplog.at_level("WARNING", logger="mllm.chat.api"):
        answer = bot.chat(messages, image, max_new_tokens=budget, temperature=0.0)
    assert answer == expected
    assert "the 2 oldest exchange(s) are left out" in caplog.text


def test_session_turn_uses_the_same_fit_and_notes_it_on_the_turn(bot, make_images, monkeypatch):
    s = ChatSession()
    s.set_image(make_images(1)[0], "red.png", "k")
    for i in range(3):
        s.ask(f"Question number {i} about the picture?")
        s.pending.answer = f"Answer number {i}, which is rather long to take some room."
        s.complete(s.pending, "stop")
    s.ask("Last one?")
    messages, images = s.conversation()
    settings = GenerationSettings(max_new_tokens=6, temperature=0.0)
    alone = bot.prompt_length([{"from": "human", "value": "<image>\nLast one?"}])
    monkeypatch.setattr(bot.processor, "model_max_length", alone + 6)
    expected = bot.fit(messages, images, settings)
    list(run_turn(bot, s, settings))
    ex = s.exchanges[-1]
    assert expected.dropped == 3 and s.context_start == 3
    assert ex.finish in ("stop", "length") and [n.text for n in ex.notes] == [
        "The conversation outgrew the model's context window (%d tokens): the 3 oldest turns (\"Question number 0 "
        "about the picture?\"; \"Question number 1 about the picture?\"; \"Question number 2 about the picture?\") "
        "are no longer sent to the model, the image still is." % (alone + 6)]
    transcript = [m["content"] for m in s.transcript()]
    at = transcript.index("Last one?")
    assert transcript[at + 1].startswith("ℹ️ The conversation outgrew") and transcript[at + 2] == ex.answer
    assert not [i for i in s.items if isinstance(i, Note) and "context window" in i.text]  # not a loose note
