"""`llm2clip-llava chat`: scripted questions, piped commands, streaming vs not, and clear failures."""
from __future__ import annotations

import io
import sys

import pytest

from mllm.chat import cli

ARGS = ["--max-new-tokens", "5", "--temperature", "0"]


def _run(argv, capsys, monkeypatch, stdin=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llm2clip-llava chat") and "/image PATH" in out and "--question" in out


@pytest.mark.parametrize("stream", [True, False])
def test_scripted_multi_turn_answers_use_the_history(bot, chat_checkpoint, image_files, capsys, monkeypatch, stream):
    image = str(image_files[0][0])
    argv = ["--model", str(chat_checkpoint), "--image", image, "-q", "What colour?", "-q", "Sure?", *ARGS]
    code, out, err = _run(argv + ([] if stream else ["--no-stream"]), capsys, monkeypatch)
    assert code == 0, err
    first = bot.chat("What colour?", image, max_new_tokens=5)
    second = bot.chat([{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": first},
                       {"role": "user", "content": "Sure?"}], image, max_new_tokens=5)
    assert [line.strip() for line in out.splitlines()] == [first, second]
    assert "tower tiny-eva02" in err and "quantisation none" in err


def test_piped_questions_and_commands(bot, chat_checkpoint, image_files, capsys, monkeypatch):
    (img0, img1, _), fake = image_files
    script = "\n".join([
        "/settings", "/mode crop", "/set temperature 0", "/set top_p 2", "/set nonsense 1", "/bogus",
        "What colour?", "/reset", f"/image {fake}", f"/image {img1}", "And now?", "/noimage", "Hello?",
        "/quit", "never asked",
    ]) + "\n"
    code, out, err = _run(["--model", str(chat_checkpoint), "--image", str(img0), *ARGS], capsys, monkeypatch, script)
    assert code == 0, err
    answers = [line.strip() for line in out.splitlines()]
    assert answers == [bot.chat("What colour?", str(img0), max_new_tokens=5, image_aspect_ratio="crop"),
                       bot.chat("And now?", str(img1), max_new_tokens=5, image_aspect_ratio="crop"),
                       bot.chat("Hello?", max_new_tokens=5)]
    for expected in ("max_new_tokens=5", "Image preprocessing: crop (the model was trained with pad)",
                     "top_p must be in (0, 1]", "usage: /set NAME VALUE", "unknown command /bogus",
                     "Conversation reset; still about", f"Cannot use {fake}: it is not an image",
                     f"Image {img1} (40×30) loaded", "Image removed"):
        assert expected in err, expected


def _run_command(argv, capsys):
    from mllm.cli import main

    code = main(["chat", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_image_and_bad_model_fail_with_one_line(chat_checkpoint, image_files, capsys, monkeypatch, tmp_path):
    import mllm.llm

    def no_model_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(mllm.llm, "load_llm", no_model_load)
    _, fake = image_files
    code, out, err = _run_command(["--model", str(chat_checkpoint), "--image", str(fake), "-q", "hi"], capsys)
    assert code == 2 and "it is not an image" in err and out == "" and len(err.splitlines()) == 1
    code, _, err = _run_command(["--model", str(tmp_path), "-q", "hi"], capsys)
    assert code == 2 and "config.json is missing" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("LLM2CLIP_LLAVA_HOME", str(tmp_path))
    code, _, err = _run_command(["-q", "hi"], capsys)
    assert code == 2 and "llm2clip-llava quickstart" in err and len(err.splitlines()) == 1


def test_bad_settings_are_usage_errors(capsys):
    code, _, err = _run_command(["--temperature", "-1", "-q", "hi"], capsys)
    assert code == 2 and "temperature must be >= 0" in err and len(err.splitlines()) == 1


def test_save_then_load_continues_the_conversation(bot, chat_checkpoint, image_files, capsys, monkeypatch, tmp_path):
    image = str(image_files[0][0])
    saved = tmp_path / "conv.json"
    code, out, err = _run(["--model", str(chat_checkpoint), "--image", image, *ARGS],
                          capsys, monkeypatch, f"What colour?\n/save {saved}\n")
    assert code == 0 and f"Saved the conversation to {saved}" in err
    first = out.strip()
    code, out, err = _run(["--model", str(chat_checkpoint), "--load", str(saved), "-q", "Sure?", *ARGS],
                          capsys, monkeypatch)
    assert code == 0, err
    assert f"Loaded {saved}: 1 turn about {image}" in err
    expected = bot.chat([{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": first},
                         {"role": "user", "content": "Sure?"}], image, max_new_tokens=5)
    assert out.strip() == expected
    code, _, err = _run(["--model", str(chat_checkpoint), "-q", f"/load {tmp_path / 'nope.json'}", "-q",
                         f"/save {tmp_path / 'x.txt'}", *ARGS], capsys, monkeypatch)
    assert "error: cannot load" in err and "no such file" in err and "must end in .json or .zip" in err


def test_a_trim_notice_comes_before_the_answer_it_concerns(bot, image_files, monkeypatch):
    from mllm.chat.session import ChatSession

    lines = io.StringIO()
    chat = cli.TerminalChat(bot, ChatSession(), bot.settings(max_new_tokens=4, temperature=0.0), None, stream=True,
                            out=lines, err=lines)
    chat.load_image(str(image_files[0][0]))
    chat.ask("A first question that takes a little room in the prompt?")
    alone = bot.prompt_length([{"from": "human", "value": "<image>\nSecond?"}])
    monkeypatch.setattr(bot.processor, "model_max_length", alone + 4)
    chat.ask("Second?")
    text = lines.getvalue().splitlines()
    notice = next(i for i, line in enumerate(text) if "outgrew the model's context window" in line)
    assert text[notice + 1].strip() == chat.session.exchanges[-1].answer  # the notice, then its answer
    assert notice == len(text) - 2 or "cut off" in text[-1]


def test_default_answer_length_follows_the_context_window(chat_checkpoint, bot, capsys, monkeypatch):
    from mllm.chat.command import load_for_command

    args = cli.build_parser().parse_args(["--model", str(chat_checkpoint)])
    loaded, code = load_for_command("chat", args, max_new_tokens=None, temperature=0.0)
    assert code == 0
    assert loaded.default_settings.max_new_tokens == max(16, min(1024, loaded.processor.model_max_length // 4))


def test_a_bad_conversation_file_fails_before_the_model_loads(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("mllm.chat.api.ChatModel.from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "bad.json").write_text('{"conversations": []}')
    code, _, err = _run_command(["--load", str(tmp_path / "bad.json"), "-q", "hi"], capsys)
    assert code == 2 and "cannot load bad.json: the turns must alternate" in err and len(err.splitlines()) == 1
