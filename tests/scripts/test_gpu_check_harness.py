"""The GPU check's phase runner keeps every finished phase on disk, whatever happens to the next one."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from gpu_check_lib.harness import Phase, Results, Runner  # noqa: E402
from gpu_check_lib.phases import PHASES  # noqa: E402
from gpu_check_lib.report import render_table  # noqa: E402


def _runner(tmp_path, budget_s=100.0):
    results = Results(tmp_path / "r.json", {"device": "cpu", "tiny": True})
    return Runner(results, torch.device("cpu"), budget_s, log=lambda msg: None), tmp_path / "r.json"


def _on_disk(path):
    return json.loads(path.read_text())


def test_results_written_after_every_phase_and_a_raising_phase_does_not_stop_the_run(tmp_path):
    runner, path = _runner(tmp_path)
    seen = {}

    def first(w, record):
        return {"tokens_per_s": 123.0}

    def boom(w, record):
        seen["before_boom"] = _on_disk(path)
        record({"partial": 7})  # saved at once: survives the crash below
        seen["after_record"] = _on_disk(path)
        raise RuntimeError("CUDA out of memory (simulated)")

    def last(w, record):
        return {"images_per_s": 5.0}

    workload = SimpleNamespace(broken=set())
    ok = runner.run([Phase("first", first, 1), Phase("boom", boom, 1), Phase("last", last, 1)], workload)
    assert ok is False
    assert seen["before_boom"]["phases"]["first"] == {**seen["before_boom"]["phases"]["first"], "status": "ok",
                                                       "tokens_per_s": 123.0}
    assert seen["before_boom"]["phases"]["boom"]["status"] == "running"
    assert seen["after_record"]["phases"]["boom"]["partial"] == 7
    final = _on_disk(path)
    boom_result = final["phases"]["boom"]
    assert boom_result["status"] == "failed" and boom_result["partial"] == 7
    assert "CUDA out of memory (simulated)" in boom_result["error"] and "RuntimeError" in boom_result["traceback"]
    assert final["phases"]["last"]["status"] == "ok" and final["phases"]["last"]["images_per_s"] == 5.0
    assert final["finished"] is True and list(final["phases"]) == ["first", "boom", "last"]
    assert not (tmp_path / "r.json.tmp").exists()


def test_phases_that_cannot_fit_or_lack_a_working_dependency_are_skipped_with_the_reason(tmp_path):
    runner, path = _runner(tmp_path, budget_s=50.0)
    ran = []
    workload = SimpleNamespace(broken={"bitsandbytes"})
    phases = [Phase("needs_bnb", lambda w, r: ran.append("needs_bnb"), 1, needs=("bitsandbytes",)),
              Phase("too_long", lambda w, r: ran.append("too_long"), 500),
              Phase("fits", lambda w, r: ran.append("fits"), 10)]
    assert runner.run(phases, workload) is False
    assert ran == ["fits"]
    phases_on_disk = _on_disk(path)["phases"]
    assert "bitsandbytes not working" in phases_on_disk["needs_bnb"]["reason"]
    assert "needs ~500 s" in phases_on_disk["too_long"]["reason"]
    assert phases_on_disk["fits"]["status"] == "ok"


def test_every_phase_has_a_unique_name_an_estimate_and_fits_the_default_budget():
    names = [p.name for p in PHASES]
    assert len(names) == len(set(names)) and names[0] == "preflight"
    assert sum(p.estimate_s for p in PHASES) < 480  # the default --budget-s
    table = render_table({"tiny": False, "finished": True, "total_s": 1,
                          "phases": {"new_phase": {"status": "ok", "seconds": 2}}})
    assert "| new_phase | ok in 2 s |" in table  # a phase added later is reported before it gets its own row
