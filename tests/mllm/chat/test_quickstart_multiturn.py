"""Acceptance: a five-turn conversation with the quickstart model (512-token window) keeps every turn, through the
Python API and the terminal chat, by default and with max-new-tokens at the whole window; every answer is the
held-out gold answer."""
from __future__ import annotations

import pytest

from mllm.chat import cli, load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_bot(quickstart_home):
    return load(quickstart_home.model_dir)


def test_api_keeps_all_five_turns_with_the_default_answer_length(quick_bot, quickstart_conversation):
    image, questions = quickstart_conversation
    assert quick_bot.processor.model_max_length == 512 and quick_bot.default_settings.max_new_tokens == 128
    messages = []
    for turn, (question, gold) in enumerate(questions):
        messages.append({"role": "user", "content": question})
        fit = quick_bot.fit(messages, image)
        assert fit.dropped == 0 and fit.turns[0]["value"].startswith("<image>"), turn  # every turn, image first
        assert fit.max_new_tokens == 128
        answer = quick_bot.chat(messages, image)
        assert answer == gold, (turn, question)  # held out: read from the pixels, with every earlier turn in view
        messages.append({"role": "assistant", "content": answer})
    # the same with the setting: max_new_tokens = the whole window (512) still keeps every turn
    fit = quick_bot.fit(messages + [{"role": "user", "content": "Describe the image briefly."}], image,
                        max_new_tokens=512)
    assert fit.dropped == 0 and fit.max_new_tokens == 512 - fit.prompt_tokens


def test_terminal_chat_keeps_all_five_turns(quick_bot, quickstart_conversation, quickstart_home, monkeypatch, capsys):
    image, questions = quickstart_conversation
    monkeypatch.setenv("LLM2CLIP_LLAVA_HOME", str(quickstart_home.home))  # the default model, as after quickstart
    argv = ["--image", image]
    for question, _ in questions:
        argv += ["-q", question]
    assert cli.main(argv + ["--max-new-tokens", "512"]) == 0  # the setting, explicitly
    out, err = capsys.readouterr()
    assert "context window" not in err and "cut off" not in err
    answers = [line.strip() for line in out.strip().splitlines()]
    assert answers == [gold for _, gold in questions]
    messages = []  # each answer is the API's answer to the whole conversation so far
    for (question, _), answer in zip(questions, answers):
        messages.append({"role": "user", "content": question})
        assert answer == quick_bot.chat(messages, image)
        messages.append({"role": "assistant", "content": answer})
