"""Commands check paths, output dirs, checkpoints and option values before any model loads: a user error is one
line (`llm2clip-llava <cmd>: error: ...`) and exit status 2. Known-harmless library warnings stay silent in
every command."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings

import pytest
import torch

from mllm import LoraSpec, save_pretrained
from mllm.cli import main

EPS_58 = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


@pytest.fixture(scope="module")
def checkpoints(make_tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("fail_fast")
    model, processor = make_tiny_model("llama")
    save_pretrained(model, processor, root / "plain")
    model, processor = make_tiny_model("llama", lora=LoraSpec(r=4, alpha=8))
    save_pretrained(model, processor, root / "lora")
    return root


@pytest.fixture
def no_model_load(monkeypatch):
    import mllm.llm
    import mllm.merge
    import mllm.serialization

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    for module, names in ((mllm.llm, ("load_llm", "load_merged_llm")), (mllm.merge, ("load_merged_llm",)),
                          (mllm.serialization, ("load_llm", "load_merged_llm"))):
        for name in names:
            monkeypatch.setattr(module, name, refuse)


def _cases(ckpt, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    full = tmp_path / "full_dir"
    full.mkdir()
    (full / "keep.txt").write_text("precious")
    eps = tmp_path / "photo.jpg"
    eps.write_bytes(EPS_58)
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]))
    plain, lora = str(ckpt / "plain"), str(ckpt / "lora")
    tok = str(ckpt / "plain" / "tokenizer")
    bench = ["--benchmark", "pope", "--data", str(tmp_path)]
    return [
        (["eval", "--model", plain, *bench, "--output-dir", str(a_file)], "exists and is not a directory"),
        (["eval", "--model", str(tmp_path / "nope"), *bench], "does not exist"),
        (["eval", "--model", str(a_file), *bench], "is not a directory"),
        (["eval", "--model", plain, *bench, "--device", "warp9"], "is not a device"),
        (["eval", "--model", plain, *bench, "--num-workers", "-1"], "num_workers must be >= 0"),
        (["chat", "--model", plain, "--image", str(eps), "-q", "hi"], "format EPS"),
        (["chat", "--model", plain, "--image", str(tmp_path / "gone.png"), "-q", "hi"], "does not exist"),
        (["chat", "--model", plain, "--top-p", "3", "-q", "hi"], "top_p must be in (0, 1]"),
        (["chat", "--model", plain, "--device", "warp9", "-q", "hi"], "is not a device"),
        (["merge", plain, str(tmp_path / "m")], "no LoRA adapter"),
        (["merge", lora, str(full)], "is not empty"),
        (["merge", lora, lora + "/merged"], "inside the checkpoint"),
        (["merge", lora, str(a_file)], "exists and is not a directory"),
        (["merge", lora, str(tmp_path / "m"), "--base", "dequantized"], "4-bit base"),
        (["merge", str(tmp_path / "nope"), str(tmp_path / "m")], "does not exist"),
        (["validate", "--data", str(tmp_path / "nope.json"), "--tokenizer", tok], "does not exist"),
        (["validate", "--data", str(data), "--tokenizer", tok, "--image-folder", str(a_file)], "not a directory"),
        (["validate", "--data", str(data), "--tokenizer", tok, "--tower", "bogus"], "unknown --tower preset"),
        (["validate", "--data", str(data), "--tokenizer", tok, "--json-out", str(full)], "is a directory"),
        (["validate", "--data", str(data), "--tokenizer", tok, "--limit", "0"], "--limit must be >= 1"),
        (["validate", "--data", str(data), "--tokenizer", str(tmp_path / "no_tok")], "tokenizer"),
        (["compare", str(tmp_path / "nope"), "--output-dir", str(a_file)], "exists and is not a directory"),
        (["compare", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "c")], "no such file or folder"),
    ]


def test_user_errors_are_one_line_exit_2_before_any_model_loads(checkpoints, tmp_path, no_model_load, capsys):
    for argv, message in _cases(checkpoints, tmp_path):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 2, (argv, err)
        assert len(err.splitlines()) == 1 and err.startswith(f"llm2clip-llava {argv[0]}: error: "), (argv, err)
        assert message in err, (argv, err)
    assert (tmp_path / "full_dir" / "keep.txt").read_text() == "precious"  # nothing lost
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


def test_a_multi_line_library_message_is_printed_as_one_line(monkeypatch, capsys):
    import mllm.eval.compare
    from mllm.errors import UserError

    def broken(argv):
        raise UserError("first line\nsecond line\n  third")

    monkeypatch.setattr(mllm.eval.compare, "main", broken)
    assert main(["compare", "x"]) == 2
    assert capsys.readouterr().err == "llm2clip-llava compare: error: first line second line third\n"


def test_known_harmless_warnings_are_silenced_in_every_command(tmp_path, capsys, caplog):
    """Not only the quickstart: any command (here `compare`) installs the filters, which drop exactly the
    known messages and let every other warning of the same libraries through."""
    assert main(["compare", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "c")]) == 2
    capsys.readouterr()
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
        bnb.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # as a user's environment would show them ...
        from mllm.quiet import silence_known_warnings

        silence_known_warnings()  # ... and the command's filters on top
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("some other future change", FutureWarning)
    assert [str(w.message) for w in seen] == ["some other future change"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_deepspeeds_cpu_accelerator_notice_is_silenced():
    """DeepSpeed logs through its own handler (not propagated), so this runs the real import in a fresh process."""
    pytest.importorskip("deepspeed")
    probe = ("import sys; {setup}from deepspeed.accelerator import get_accelerator; get_accelerator(); "
             "from deepspeed.utils import logger; logger.warning('another DeepSpeed warning')")
    quiet = "from mllm.quiet import silence_known_warnings; silence_known_warnings(); "
    for setup, shown in (("", True), (quiet, False)):
        done = subprocess.run([sys.executable, "-c", probe.format(setup=setup)], capture_output=True, text=True,
                              check=True)
        output = done.stdout + done.stderr
        assert ("Setting accelerator to CPU" in output) is shown, output[-2000:]
        assert "another DeepSpeed warning" in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_device_without_cuda_is_named(checkpoints, no_model_load, capsys):
    assert main(["chat", "--model", str(checkpoints / "plain"), "--device", "cuda", "-q", "hi"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err
