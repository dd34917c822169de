"""`llm2clip-llava demo` options: loopback by default, share only when asked, a bounded queue, clear failures."""
from __future__ import annotations

import json
import os
from pathlib import Path

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
                          (["--device", "nonsense"], "is not a device"),
                          (["--session-ttl", "0"], "--session-ttl must be > 0"),
                          (["--upload-concurrency", "0"], "--upload-concurrency must be >= 1"),
                          (["--auth", "nopassword"], "--auth #1: expected USER:PASS")]:
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


def test_uploads_are_decoded_in_the_queue_and_answers_share_one_limit(demo_checkpoint, captured):
    assert app.main(["--model", str(demo_checkpoint), "--upload-concurrency", "3", "--concurrency", "2"]) == 0
    blocks = captured["blocks"]
    fns = {fn.api_name: fn for fn in blocks.fns.values()}
    for name in ("send", "load"):  # decoding an attachment waits for one of the 3 decode slots
        assert fns[name].queue and fns[name].concurrency_id == "decode" and fns[name].concurrency_limit == 3
    for name in ("generate", "generate_again"):  # Send's and Regenerate's answers: one limit of 2 together
        assert fns[name].queue and fns[name].concurrency_id == "generate"
        assert fns[name].concurrency_limit == "default" and captured["queue"]["default_concurrency_limit"] == 2
    assert not fns["stop"].queue  # Stop works while every slot is busy


def test_sessions_expire_and_the_cache_is_swept(demo_checkpoint, captured):
    assert app.main(["--model", str(demo_checkpoint), "--session-ttl", "90", "--max-sessions", "7"]) == 0
    blocks = captured["blocks"]
    state = next(b for b in blocks.blocks.values() if isinstance(b, gr.State))
    assert state.time_to_live == 90 and blocks.delete_cache == (45, 90)
    assert captured["launch"]["state_session_capacity"] == 7


def test_logins_from_flags_and_file(demo_checkpoint, captured, tmp_path, capsys):
    logins = tmp_path / "logins.txt"
    logins.write_text("# the lab\nalice:s3cret:with:colons\n\nbob: pw \n")
    assert app.main(["--model", str(demo_checkpoint), "--auth", "carol:pw", "--auth-file", str(logins)]) == 0
    assert captured["launch"]["auth"] == [("carol", "pw"), ("alice", "s3cret:with:colons"), ("bob", " pw")]
    assert "login required (3 users)" in capsys.readouterr().out
    assert app.main(["--model", str(demo_checkpoint)]) == 0 and captured["launch"]["auth"] is None


@pytest.mark.parametrize("argv, message", [
    (["--auth", "nopassword"], "--auth #1: expected USER:PASS"),
    (["--auth", ":pw"], "--auth #1: expected USER:PASS"),
    (["--auth-file", "/nonexistent/logins"], "cannot read --auth-file /nonexistent/logins"),
])
def test_bad_logins_are_refused_before_the_model_loads(captured, argv, message, monkeypatch):
    from mllm.errors import UserError

    monkeypatch.setattr("mllm.chat.api.ChatModel.from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(UserError, match=message) as err:
        app.main(argv)
    assert "nopassword" not in str(err.value) or "#1" in str(err.value)


def test_header_and_log_name_models_by_folder_not_server_path(demo_checkpoint, captured, capsys):
    from demo.ui import public_name

    assert app.main(["--model", str(demo_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert f"llm2clip-llava demo: {demo_checkpoint.name} (tower tiny-eva02" in out and str(demo_checkpoint) not in out
    config = json.dumps(captured["blocks"].get_config_file(), default=str)
    assert str(demo_checkpoint) not in config and str(demo_checkpoint.parent) not in config
    assert public_name("lmsys/vicuna-7b-v1.5") == "lmsys/vicuna-7b-v1.5" and public_name("/srv/m/run-3") == "run-3"


def test_the_workspace_is_removed_and_gradio_temp_dir_restored(demo_checkpoint, captured, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    seen = {}
    real_launch = gr.Blocks.launch

    def launch(self, *args, **kwargs):
        seen["temp"] = os.environ["GRADIO_TEMP_DIR"]
        seen["files"] = sorted(p.name for p in Path(seen["temp"], "examples").iterdir())
        return real_launch(self, *args, **kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    assert app.main(["--model", str(demo_checkpoint)]) == 0
    assert Path(seen["temp"]).parent == tmp_path and "red-circle.png" in seen["files"]
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path) and list(tmp_path.iterdir()) == []
