"""`llm2clip-llava demo` options: loopback by default, share only when asked, a bounded queue, clear failures."""
from __future__ import annotations

import gradio as gr
import pytest

from demo import app


@pytest.fixture
def captured(monkeypatch):
    """Run `main` up to the launch, recording queue and launch arguments instead of serving."""
    calls = {}
    real_queue = gr.Blocks.queue

    def queue(self, *args, **kwargs):
        calls["queue"] = kwargs
        return real_queue(self, *args, **kwargs)

    def launch(self, *args, **kwargs):
        calls["launch"] = kwargs
        calls["blocks"] = self

    monkeypatch.setattr(gr.Blocks, "queue", queue)
    monkeypatch.setattr(gr.Blocks, "launch", launch)
    return calls


def test_defaults_bind_loopback_without_share(demo_checkpoint, captured, capsys):
    assert app.main(["--model", str(demo_checkpoint)]) == 0
    launch = captured["launch"]
    assert launch["server_name"] == "127.0.0.1" and launch["server_port"] == 7860 and launch["share"] is False
    assert launch["show_error"] is True and launch["ssr_mode"] is False
    assert captured["queue"] == {"default_concurrency_limit": 4, "max_size": 64}
    assert "tiny-eva02" in capsys.readouterr().out


def test_host_port_share_and_queue_are_passed_through(demo_checkpoint, captured):
    argv = ["--model", str(demo_checkpoint), "--host", "0.0.0.0", "--port", "8123", "--share", "--concurrency", "2",
            "--max-queue", "9", "--image-mode", "crop"]
    assert app.main(argv) == 0
    launch = captured["launch"]
    assert (launch["server_name"], launch["server_port"], launch["share"]) == ("0.0.0.0", 8123, True)
    assert captured["queue"] == {"default_concurrency_limit": 2, "max_size": 9}
    radio = next(b for b in captured["blocks"].blocks.values() if getattr(b, "elem_id", None) == "image-mode")
    assert radio.value == "crop"


def test_bad_options_and_missing_model_fail_clearly(captured, capsys, tmp_path, monkeypatch):
    from mllm.cli import main

    (tmp_path / "a_file").write_text("x")
    for argv, message in [(["--concurrency", "0"], "--concurrency must be >= 1"),
                          (["--temperature", "-1"], "temperature must be >= 0"),
                          (["--port", "70000"], "between 1 and 65535"),
                          (["--max-file-size", "lots"], "--max-file-size 'lots' is not a size"),
                          (["--examples-dir", str(tmp_path / "a_file")], "exists and is not a directory"),
                          (["--device", "nonsense"], "is not a device")]:
        assert main(["demo", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    monkeypatch.setenv("LLM2CLIP_LLAVA_HOME", str(tmp_path))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "llm2clip-llava quickstart" in err and len(err.splitlines()) == 1
    assert "launch" not in captured


def test_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        app.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llm2clip-llava demo") and "127.0.0.1" in out and "--share" in out
