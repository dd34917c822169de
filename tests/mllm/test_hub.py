"""Hub loads: code shipped with a checkpoint (`auto_map`) never runs, even with "y" on stdin; `revision=` pins
the hub LLM and tower, is recorded in the manifest and used again when the checkpoint is loaded."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllm import LoraSpec, MLLMConfig, TowerSpec, build_model, load_model, save_pretrained
from mllm.errors import UserError
from mllm.hub import LLMLoadError, RemoteCodeRefusedError

REPO = Path(__file__).resolve().parents[2]


def _plant_code(directory: Path, marker: Path, config_name: str, patch: dict) -> None:
    """Make `directory/config_name` ask transformers to import evil_code.py, which writes `marker` on import."""
    (directory / "evil_code.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the checkpoint ran its code')\n"
        "from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_arch'\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    path = directory / config_name
    data = json.loads(path.read_text())
    data.update(patch)
    path.write_text(json.dumps(data))


def _hostile_tokenizer(checkpoint: Path, marker: Path) -> Path:
    _plant_code(checkpoint / "tokenizer", marker, "tokenizer_config.json", {
        "tokenizer_class": "EvilTokenizer",
        "auto_map": {"AutoTokenizer": ["evil_code.EvilTokenizer", "evil_code.EvilTokenizer"]}})
    return checkpoint


def _hostile_llm(llm_dir: Path, marker: Path) -> Path:
    _plant_code(llm_dir, marker, "config.json", {
        "model_type": "evil_arch", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil_code.EvilConfig", "AutoModelForCausalLM": "evil_code.EvilModel"}})
    return llm_dir


@pytest.fixture(scope="module")
def saved(make_tiny_model, tmp_path_factory):
    """A plain checkpoint and one with full LLM weights (llm/), saved once."""
    root = tmp_path_factory.mktemp("hub")
    model, processor = make_tiny_model("llama")
    save_pretrained(model, processor, root / "plain")
    save_pretrained(model, processor, root / "full", save_llm=True)
    return root


@pytest.fixture
def yes_on_stdin(monkeypatch):
    """What a user (or a script piping `yes`) answers to transformers' "run the custom code? [y/N]"."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))


def test_auto_map_tokenizer_never_runs(saved, tmp_path, yes_on_stdin):
    marker = tmp_path / "MARKER"
    ckpt = _hostile_tokenizer(Path(shutil.copytree(saved / "plain", tmp_path / "ckpt")), marker)
    with pytest.raises(RemoteCodeRefusedError, match="auto_map") as info:
        load_model(ckpt)
    assert "\n" not in str(info.value) and str(ckpt / "tokenizer") in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["in the checkpoint (llm/)", "the external base LLM"])
def test_auto_map_llm_never_runs(saved, tmp_path, yes_on_stdin, where):
    marker = tmp_path / "MARKER"
    if where == "in the checkpoint (llm/)":
        ckpt = Path(shutil.copytree(saved / "full", tmp_path / "ckpt"))
        _hostile_llm(ckpt / "llm", marker)
    else:
        ckpt = Path(shutil.copytree(saved / "plain", tmp_path / "ckpt"))
        base = _hostile_llm(Path(shutil.copytree(saved / "full" / "llm", tmp_path / "base")), marker)
        manifest = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps({**manifest, "llm": str(base)}))
    with pytest.raises(RemoteCodeRefusedError, match="LLM"):
        load_model(ckpt)
    assert not marker.exists()


def test_validate_refuses_an_auto_map_tokenizer(saved, tmp_path, yes_on_stdin, capsys):
    from mllm.cli import main

    marker = tmp_path / "MARKER"
    ckpt = _hostile_tokenizer(Path(shutil.copytree(saved / "plain", tmp_path / "ckpt")), marker)
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]))
    assert main(["validate", "--data", str(data), "--tokenizer", str(ckpt / "tokenizer")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "auto_map" in err and not marker.exists()


def test_chat_command_with_yes_piped_runs_nothing(saved, tmp_path):
    """The real console script, "y" on its stdin: one line, exit 2, no marker, and no LLM loaded first."""
    marker = tmp_path / "MARKER"
    ckpt = _hostile_tokenizer(Path(shutil.copytree(saved / "plain", tmp_path / "ckpt")), marker)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mllm.cli", "chat", "--model", str(ckpt), "-q", "hi"],
                          input="y\ny\ny\n", capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "Loading weights" not in line]
    assert lines == [line for line in lines if line.startswith("llm2clip-llava chat: error: refusing")], done.stderr
    assert len(lines) == 1 and "[y/N]" not in done.stderr and not marker.exists()


# ---------------------------------------------------------------------------------------------- revision=
def _fake_hub_repo(cache: Path, repo_id: str, revisions: dict[str, Path]) -> None:
    """An offline Hugging Face cache holding `repo_id` at several refs (branch/tag -> a snapshot's files)."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    for i, (ref, source) in enumerate(revisions.items()):
        commit = f"{i + 1:040x}"
        shutil.copytree(source, root / "snapshots" / commit)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, tiny_llm_dirs, tiny_tower_dir, spm_tokenizer_dir):
    """acme/llm and acme/tower with two revisions each: `main` (the tiny fixtures) and `v2` (other weights)."""
    from huggingface_hub import constants

    from mllm.tiny import save_tiny_llm, save_tiny_tower

    llm_main, llm_v2 = tmp_path / "llm_main", tmp_path / "llm_v2"
    shutil.copytree(tiny_llm_dirs("llama"), llm_main)
    save_tiny_llm(llm_v2, "llama", seed=123)
    for d in (llm_main, llm_v2):
        for f in Path(spm_tokenizer_dir).iterdir():
            shutil.copy(f, d / f.name)
    tower_v2 = save_tiny_tower(tmp_path / "tower_v2", seed=7)
    cache = tmp_path / "hub_cache"
    _fake_hub_repo(cache, "acme/llm", {"main": llm_main, "v2": llm_v2})
    _fake_hub_repo(cache, "acme/tower", {"main": Path(tiny_tower_dir), "v2": Path(tower_v2)})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return {"llm_v2": llm_v2, "tower_v2": tower_v2}


def _weights(module) -> dict:
    return {k: v.detach().float().clone() for k, v in module.state_dict().items()}


def test_revision_pins_llm_and_tower_and_is_used_on_load(fake_hub, tmp_path):
    from transformers import AutoModelForCausalLM

    from vision_tower import load_vision_tower

    spec = TowerSpec(checkpoint="acme/tower", config=None, name="tiny-eva02", revision="v2")
    model, processor = build_model("acme/llm", llm_revision="v2", tower=spec, dtype=torch.float32)
    v2_llm = AutoModelForCausalLM.from_pretrained(str(fake_hub["llm_v2"]), dtype=torch.float32)
    main_llm = AutoModelForCausalLM.from_pretrained("acme/llm", dtype=torch.float32)
    v2_tower = load_vision_tower(str(fake_hub["tower_v2"]))
    w = model.llm.get_input_embeddings().weight
    assert torch.equal(w, v2_llm.get_input_embeddings().weight)
    assert not torch.equal(w, main_llm.get_input_embeddings().weight)
    for key, value in _weights(v2_tower).items():
        torch.testing.assert_close(_weights(model.vision_tower)[key], value, rtol=0, atol=0)

    save_pretrained(model, processor, tmp_path / "ckpt")
    manifest = MLLMConfig.load(tmp_path / "ckpt")
    assert manifest.llm_revision == "v2" and manifest.tower.revision == "v2"
    assert "vision_tower" not in manifest.contents  # the tower is re-read from the hub, at its revision
    loaded, _ = load_model(tmp_path / "ckpt")
    assert torch.equal(loaded.llm.get_input_embeddings().weight, v2_llm.get_input_embeddings().weight)
    for key, value in _weights(v2_tower).items():
        torch.testing.assert_close(_weights(loaded.vision_tower)[key], value, rtol=0, atol=0)


def test_unknown_revision_is_named(fake_hub):
    from vision_tower import VisionTowerLoadError, load_vision_tower

    with pytest.raises(VisionTowerLoadError, match="'v3'"):
        load_vision_tower("acme/tower", revision="v3")
    with pytest.raises(LLMLoadError, match="could not load the LLM 'acme/llm'") as info:
        build_model("acme/llm", llm_revision="v3", tower=TowerSpec(checkpoint="acme/tower", config=None))
    assert isinstance(info.value, UserError) and isinstance(info.value, OSError)  # one CLI line; old callers' except


def test_train_config_has_revision_flags_with_help():
    import dataclasses

    from mllm.train.config import TrainConfig, build_parser, resolve_config

    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
    assert "commit" in helps["llm_revision"] and "commit" in helps["tower_revision"]
    parser = build_parser("llm2clip-llava finetune", "")
    args = parser.parse_args(["--llm_revision", "abc123", "--tower_revision", "v2"])
    config = resolve_config("finetune", args, "finetune")
    assert (config.llm_revision, config.tower_revision) == ("abc123", "v2")
    assert TrainConfig().llm_revision is None


def test_merge_uses_the_recorded_revision(fake_hub, tmp_path, monkeypatch):
    import mllm.llm
    import mllm.merge

    spec = TowerSpec(checkpoint="acme/tower", config=None, name="tiny-eva02", revision="v2")
    model, processor = build_model("acme/llm", llm_revision="v2", tower=spec, dtype=torch.float32,
                                   lora=LoraSpec(r=4, alpha=8))
    save_pretrained(model, processor, tmp_path / "lora")
    seen = []
    real = mllm.llm.load_llm
    monkeypatch.setattr(mllm.llm, "load_llm", lambda *a, **k: seen.append(k.get("revision")) or real(*a, **k))
    merged = mllm.merge.merge_checkpoint(tmp_path / "lora", tmp_path / "merged", dtype="fp32")
    assert seen == ["v2"] and MLLMConfig.load(merged).llm_revision is None  # the weights are inside it now



def _loads_without_remote_code_guard(tree) -> list[int]:
    """Line numbers of `Auto*/Llava*.from_pretrained(...)` calls that pass neither trust_remote_code nor
    `**kwargs` built by `pretrained_kwargs` in the same function."""
    import ast

    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    lines = set()
    for scope in [tree, *scopes]:
        kwargs_from_helper = "pretrained_kwargs(" in ast.unparse(scope)
        for node in ast.walk(scope):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id.startswith(("Auto", "Llava"))):
                continue
            named = {k.arg for k in node.keywords}
            splatted = [k for k in node.keywords if k.arg is None]
            if "trust_remote_code" in named:
                continue
            if any("pretrained_kwargs" in ast.unparse(k.value) or kwargs_from_helper for k in splatted):
                continue
            lines.add(node.lineno)
    return sorted(lines)


def test_every_transformers_load_in_the_package_refuses_remote_code():
    """A static guard: each `Auto*/Llava*.from_pretrained(` call in the package passes trust_remote_code=False
    (directly or through `pretrained_kwargs`), so a new load cannot silently reopen the auto_map door."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = [f"{path.relative_to(root)}:{line}"
                 for pattern in ("mllm/**/*.py", "vision_tower/**/*.py", "demo/**/*.py", "projector/**/*.py")
                 for path in root.glob(pattern)
                 for line in _loads_without_remote_code_guard(ast.parse(path.read_text()))]
    assert not offenders, offenders
