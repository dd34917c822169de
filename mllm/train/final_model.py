"""The final model of a run, published into the run directory atomically.

The run directory doubles as the trained model (`mllm.load_model(run_dir)`), next to its checkpoints, so it
cannot be renamed as a whole. The model is written to `.tmp-model/`, fsynced, renamed to `.new-model/` (from
here on it is complete and durable) and swapped in entry by entry: the old manifest leaves first and the new
manifest arrives last, so no moment shows a loadable mix of two models, and `swap_model_in` run again after a
crash finishes the swap (`mllm.train.rundir.recover`). Torch-free.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..config import MANIFEST_NAME
from .durable import StepHook, fsync_dir, fsync_tree, move_entries

MODEL_TMP, MODEL_NEW, MODEL_OLD = ".tmp-model", ".new-model", ".old-model"


def read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def manifest_parts(manifest: Path) -> list[str]:
    """The top-level entries a model manifest lists under `contents` (nothing that leaves its directory)."""
    contents = read_manifest(manifest).get("contents", {})
    values = contents.values() if isinstance(contents, dict) else []
    return sorted({p for p in values if isinstance(p, str) and p and "/" not in p and not p.startswith(".")})



def publish_model(run_dir: Path, write, step_hook: StepHook = None) -> None:
    """Write the final model into the run dir atomically: temp dir → fsync → `.new-model` → swap in."""
    tmp, new = run_dir / MODEL_TMP, run_dir / MODEL_NEW
    for stale in (tmp, new, run_dir / MODEL_OLD):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    fsync_tree(tmp)
    os.replace(tmp, new)
    fsync_dir(run_dir)
    if step_hook:
        step_hook("model_synced")
    swap_model_in(run_dir, step_hook)


def swap_model_in(run_dir: Path, step_hook: StepHook = None) -> None:
    """Swap `.new-model`'s entries into the run dir. The old manifest leaves first and the new one arrives
    last, so the run dir never holds a loadable mix of two models; re-running after a crash finishes the job."""
    new, old = run_dir / MODEL_NEW, run_dir / MODEL_OLD
    if (new / MANIFEST_NAME).is_file():
        old_manifest = run_dir / MANIFEST_NAME if (run_dir / MANIFEST_NAME).is_file() else old / MANIFEST_NAME
        incoming = manifest_parts(new / MANIFEST_NAME)  # by the manifest: a retry finds some already moved in
        outgoing = [p for p in manifest_parts(old_manifest) if p not in incoming]
        move_entries([MANIFEST_NAME], run_dir, old)
        if step_hook:
            step_hook("old_manifest_removed")
        move_entries(outgoing, run_dir, old)
        for name in incoming:
            if not (new / name).exists():
                continue
            if (run_dir / name).exists():
                if (old / name).exists():
                    shutil.rmtree(old / name) if (old / name).is_dir() else (old / name).unlink()
                os.replace(run_dir / name, old / name)
            os.replace(new / name, run_dir / name)
        fsync_dir(run_dir)
        if step_hook:
            step_hook("parts_swapped")
        os.replace(new / MANIFEST_NAME, run_dir / MANIFEST_NAME)
        fsync_dir(run_dir)
        if step_hook:
            step_hook("manifest_swapped")
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
