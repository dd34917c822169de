"""Bad input to `import`/`export` fails with one line naming the problem, exit 2, and nothing written."""
from __future__ import annotations

import pytest

from mllm.cli import main

from .conftest import write_llava_original


def run_failing(argv, out, capsys) -> str:
    capsys.readouterr()  # what fixtures printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llm2clip-llava {argv[0]}: error: ") and "\n" not in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))
    return err


def test_unknown_layout(tiny_llm_dirs, tmp_path, capsys):
    err = run_failing(["import", str(tiny_llm_dirs("llama")), str(tmp_path / "out")], tmp_path / "out", capsys)
    assert "unknown checkpoint layout" in err and "LlamaForCausalLM" in err


def test_not_a_model_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = run_failing(["import", str(tmp_path / "empty"), str(tmp_path / "out")], tmp_path / "out", capsys)
    assert "no config.json" in err


def test_missing_tower(hf_llava, spm_tokenizer_dir, tmp_path, capsys):
    hf_model, _ = hf_llava
    source = write_llava_original(tmp_path / "src", hf_model, spm_tokenizer_dir, with_tower=False, sharded=False,
                                  vision_tower="/data/checkpoints/clip-vit-large-patch14-336")
    err = run_failing(["import", str(source), str(tmp_path / "out")], tmp_path / "out", capsys)
    assert "vision tower is missing" in err and "--tower" in err


@pytest.mark.parametrize("key, shape, expected", [
    ("model.mm_projector.0.weight", (64, 31), "projector weights do not fit"),
    ("model.layers.1.mlp.up_proj.weight", (100, 64), "language-model weights do not fit"),
    ("model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", (63, 32), "shape mismatch"),
])
def test_mismatched_shapes(key, shape, expected, hf_llava, clip_tower_dir, spm_tokenizer_dir, tmp_path, capsys):
    import torch

    hf_model, _ = hf_llava

    def edit(state):
        state[key] = torch.zeros(shape)

    source = write_llava_original(tmp_path / "src", hf_model, spm_tokenizer_dir, with_tower=True, sharded=False,
                                  vision_tower=str(clip_tower_dir), state_edit=edit)
    err = run_failing(["import", str(source), str(tmp_path / "out")], tmp_path / "out", capsys)
    assert expected in err and key.split("model.vision_tower.vision_tower.vision_model.")[-1].split(".weight")[0] in err


def test_eva02_export_is_refused(make_tiny_model, tmp_path, capsys):
    from mllm import save_pretrained

    model, processor = make_tiny_model("llama")
    checkpoint = save_pretrained(model, processor, tmp_path / "eva")
    err = run_failing(["export", str(checkpoint), str(tmp_path / "out")], tmp_path / "out", capsys)
    assert "EVA02" in err and "llm2clip-openai-l-14-336" in err


def test_output_that_holds_files_is_never_overwritten(hf_llava, tmp_path, capsys):
    _, source = hf_llava
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["import", str(source), str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_our_own_checkpoint_is_not_imported(ours_clip, tmp_path, capsys):
    err = run_failing(["import", str(ours_clip), str(tmp_path / "out")], tmp_path / "out", capsys)
    assert "already an llm2clip-llava checkpoint" in err
