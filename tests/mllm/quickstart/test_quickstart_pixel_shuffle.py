"""The quickstart with the pixel-shuffle projector (4x fewer image tokens) passes the same bars as the default,
on the CI profile, reusing the data and stage-0 backbones of the session's quickstart run."""
from __future__ import annotations

import json

import pytest

from mllm.cli import main as cli_main
from mllm.quickstart.profiles import PROFILES
from mllm.quickstart.run import copy_stages, run_quickstart

PROJECTOR = "pixel_shuffle2_mlp2x_gelu"


@pytest.mark.slow
def test_quickstart_with_pixel_shuffle_passes_the_same_bars(quickstart_home, tmp_path):
    root = tmp_path / "quickstart"
    copy_stages(quickstart_home.root, root)
    report = run_quickstart(root, PROFILES["ci"].replace(projector_type=PROJECTOR), seed=0, publish=False)
    assert set(report["reused_stages"]) == {"data", "base", "stage0"}  # only stages 1, 2 and eval differ
    assert report["image_tokens"] == 4 and quickstart_home.report["image_tokens"] == 16  # 4x4 patches -> 2x2
    acc, chance = report["accuracy"], report["chance"]
    assert acc["after"] >= 0.90, report
    assert acc["blank"] <= max(chance["uniform"], chance["majority"]) + 0.15, report
    assert report["passed"]
    manifest = json.loads((root / "stage2" / "config.json").read_text())
    assert manifest["projector_type"] == PROJECTOR and manifest["quantization"] == "4bit"


@pytest.mark.parametrize("projector,match", [
    ("pixel_shuffle3_mlp2x_gelu", "k=3 must divide the tower's 4x4 patch grid"),
    ("nonesuch", "unknown projector type 'nonesuch'"),
])
def test_a_projector_that_cannot_fit_fails_in_one_line_before_any_work(projector, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["quickstart", "--output-dir", str(tmp_path / "qs"), "--projector", projector])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("llm2clip-llava quickstart: error: --projector: ") and match in err
    assert not (tmp_path / "qs").exists()
