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
    assert answers == [bot.chat("What colour?", str(img0), max_new_tokens=5, image_mode="crop"),
                       bot.chat("And now?", str(img1), max_new_tokens=5, image_mode="crop"),
                       bot.chat("Hello?", max_new_tokens=5)]
    for expected in ("max_new_tokens=5", "Image preprocessing: crop (the model was trained with pad)",
                     "top_p must be in (0, 1]", "usage: /set NAME VALUE", "unknown command /bogus",
                     "Conversation reset; still about", f"Cannot use {fake}: it is not an image",
                     f"Image {img1} (40×30) loaded", "Image removed"):
        assert expected in err, expected


def test_bad_image_and_bad_model_fail_with_a_message(chat_checkpoint, image_files, capsys, monkeypatch, tmp_path):
    _, fake = image_files
    code, out, err = _run(["--model", str(chat_checkpoint), "--image", str(fake), "-q", "hi"], capsys, monkeypatch)
    assert code == 1 and "it is not an image" in err and out == ""
    code, _, err = _run(["--model", str(tmp_path), "-q", "hi"], capsys, monkeypatch)
    assert code == 1 and "cannot load the model" in err and "config.json is missing" in err and "Traceback" not in err
    monkeypatch.setenv("LLM2CLIP_LLAVA_HOME", str(tmp_path))
    code, _, err = _run(["-q", "hi"], capsys, monkeypatch)
    assert code == 1 and "llm2clip-llava quickstart" in err


def test_bad_settings_are_usage_errors(capsys, monkeypatch):
    code, _, err = _run(["--temperature", "-1", "-q", "hi"], capsys, monkeypatch)
    assert code == 2 and "temperature must be >= 0" in err
