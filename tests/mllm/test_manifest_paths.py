"""Hostile manifests: every part a checkpoint lists must stay inside its directory (absolute paths, `..`,
symlinks leading out refused with one line, before any weights are read); the base LLM and tower are external
references, shown as such."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from mllm import ManifestError, load_model, save_pretrained
from mllm.containment import ManifestPathError


@pytest.fixture(scope="module")
def saved(make_tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    model, processor = make_tiny_model("llama")
    save_pretrained(model, processor, root / "good")
    save_pretrained(model, processor, root / "other")  # a second, valid checkpoint to point into
    return root


@pytest.fixture
def no_model_load(monkeypatch):
    import mllm.llm
    import mllm.merge
    import mllm.serialization

    def refuse(*args, **kwargs):
        raise AssertionError("weights were read before the manifest was checked")

    for module in (mllm.llm, mllm.serialization):
        monkeypatch.setattr(module, "load_llm", refuse)
    for module in (mllm.llm, mllm.merge, mllm.serialization):
        monkeypatch.setattr(module, "load_merged_llm", refuse)


def _copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved / "good", tmp_path / "ckpt", symlinks=True))


def _edit(ckpt: Path, **changes) -> None:
    data = json.loads((ckpt / "config.json").read_text())
    for key, value in changes.items():
        if key == "contents":
            data["contents"] = {**data["contents"], **value}
        else:
            data[key] = value
    (ckpt / "config.json").write_text(json.dumps(data))


def _hostile(kind: str, ckpt: Path, saved: Path) -> None:
    other = saved / "other"
    if kind == "absolute projector":
        _edit(ckpt, contents={"projector": str(other / "projector")})
    elif kind == "dotdot tokenizer":
        _edit(ckpt, contents={"tokenizer": "../../" + str(other.relative_to(other.anchor)) + "/tokenizer"})
    elif kind == "dotdot inside":
        _edit(ckpt, contents={"projector": "projector/../projector"})
    elif kind == "symlinked part":
        shutil.rmtree(ckpt / "projector")
        os.symlink(other / "projector", ckpt / "projector")
    elif kind == "symlinked file in a part":
        weights = next((ckpt / "projector").glob("*.safetensors"))
        weights.unlink()
        os.symlink(next((other / "projector").glob("*.safetensors")), weights)
    elif kind == "symlinked manifest":
        (ckpt / "config.json").unlink()
        os.symlink(other / "config.json", ckpt / "config.json")
    elif kind == "adapter outside":
        _edit(ckpt, contents={"adapter": "/etc"})
    elif kind == "llm outside":
        _edit(ckpt, contents={"llm": "../"})
    elif kind == "tower dir outside":
        _edit(ckpt, contents={"vision_tower": "/"})
    elif kind == "windows absolute":
        _edit(ckpt, contents={"projector": "C:\\Windows\\projector"})
    else:
        raise ValueError(kind)


HOSTILE = ["absolute projector", "dotdot tokenizer", "dotdot inside", "symlinked part", "symlinked file in a part",
           "symlinked manifest", "adapter outside", "llm outside", "tower dir outside", "windows absolute"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_manifest_is_refused_before_loading(kind, saved, tmp_path, no_model_load):
    ckpt = _copy(saved, tmp_path)
    _hostile(kind, ckpt, saved)
    with pytest.raises(ManifestPathError) as info:
        load_model(ckpt)
    message = str(info.value)
    assert "\n" not in message and str(ckpt) in message


@pytest.mark.parametrize("kind", ["absolute projector", "symlinked part", "llm outside"])
def test_hostile_manifest_through_the_commands_is_one_line(kind, saved, tmp_path, no_model_load, capsys):
    from mllm.cli import main

    ckpt = _copy(saved, tmp_path)
    _hostile(kind, ckpt, saved)
    bench = tmp_path / "bench"
    bench.mkdir()
    for argv in (["chat", "--model", str(ckpt), "-q", "hi"],
                 ["eval", "--model", str(ckpt), "--benchmark", "pope", "--data", str(bench),
                  "--output-dir", str(tmp_path / "out")],
                 ["merge", str(ckpt), str(tmp_path / "merged")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "error:" in err and "checkpoint" in err, (argv, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "merged").exists()  # nothing written either


def test_malformed_manifests_are_one_line(saved, tmp_path, no_model_load):
    ckpt = _copy(saved, tmp_path)
    for broken in ([1, 2], {"format": "llm2clip-llava", "llm": "x", "contents": ["projector"]},
                   {"format": "llm2clip-llava", "llm": "x", "contents": {"projector": "projector"}},
                   {"format": "llm2clip-llava", "llm": "x", "contents": {"projector": 5, "tokenizer": "tokenizer"}},
                   {"format": "llm2clip-llava", "llm": 3},
                   {"format": "llm2clip-llava", "llm": "x", "tower": "not an object"}):
        (ckpt / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ManifestError) as info:
            load_model(ckpt)
        assert "\n" not in str(info.value)


def test_symlinks_that_stay_inside_are_fine_and_externals_are_shown(saved, tmp_path, caplog):
    ckpt = _copy(saved, tmp_path)
    shutil.move(ckpt / "projector", ckpt / "real_projector")
    os.symlink(ckpt / "real_projector", ckpt / "projector")  # inside: allowed
    link = tmp_path / "link_to_ckpt"
    os.symlink(ckpt, link)  # the checkpoint directory itself may be reached through a link
    with caplog.at_level(logging.INFO, logger="mllm.serialization"):
        model, _ = load_model(link)
    external = [r.getMessage() for r in caplog.records if "external reference" in r.getMessage()]
    assert any("base LLM" in m and model.config.llm in m and "local path" in m for m in external), external
    assert any("base tower" in m for m in external), external


def test_chat_banner_names_the_external_base_llm(saved):
    from mllm.chat import load
    from mllm.chat.cli import banner

    bot = load(saved / "good")
    text = banner(bot.info())
    assert f"base LLM: {bot.config.llm} (external reference: local path" in text


def test_relative_base_llm_and_tower_resolve_against_the_checkpoint(saved, tmp_path, monkeypatch, tiny_llm_dirs,
                                                                    tiny_tower_dir):
    """A checkpoint shipped next to its bases (manifest: ../llm, ../tower) loads from any working directory,
    the tower resolved the same way as the LLM."""
    shipped = tmp_path / "shipped"
    ckpt = Path(shutil.copytree(saved / "good", shipped / "ckpt"))
    shutil.copytree(tiny_llm_dirs("llama"), shipped / "llm")
    shutil.copytree(tiny_tower_dir, shipped / "tower")
    data = json.loads((ckpt / "config.json").read_text())
    assert "vision_tower" not in data["contents"] and "llm" not in data["contents"]  # both are external references
    data["llm"], data["tower"]["checkpoint"] = "../llm", "../tower"
    (ckpt / "config.json").write_text(json.dumps(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model, _ = load_model(ckpt)
    reference, _ = load_model(saved / "good")
    for key, value in reference.vision_tower.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[key], value), key
