"""Run the recipe's steps in order, each through its command's own entry point, resumable at every step.

- A finished step has a completion marker (`<output>/.recipe/<step>.json`, written atomically only after the
  step returned successfully) holding its fingerprint: it is skipped when the same command would run again,
  and refused, naming the step, when the recipe changed under it.
- An interrupted training step resumes from its run's latest complete checkpoint (`--resume_from`, the
  trainer's own mechanism); one killed before its first checkpoint starts again. An interrupted evaluation
  resumes from its prediction cache (`eval` reuses every cached answer).
- Steps run in this process (one import of torch for the whole recipe), or, for training with
  `num_processes > 1` (or an accelerate config), as `accelerate launch ... -m mllm.cli <command>` subprocesses.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError
from ..eval import cli as eval_cli
from ..eval import compare
from ..train import cli as train_cli
from .plan import Step

log = logging.getLogger("mllm.recipe")
MARKER_DIR = ".recipe"


class StepFailed(UserError):
    """A step's command returned a failure status (its own message was printed above it)."""


@dataclass
class StepResult:
    step: Step
    status: str  # done (skipped: finished earlier) | ran
    seconds: float
    info: dict


def marker_path(output_dir: Path, step: Step) -> Path:
    return Path(output_dir) / MARKER_DIR / (step.id.replace("/", "__") + ".json")


def read_marker(output_dir: Path, step: Step) -> dict | None:
    path = marker_path(output_dir, step)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a marker that cannot be read marks nothing: the step runs (and resumes) again


def write_marker(output_dir: Path, step: Step, info: dict) -> Path:
    path = marker_path(output_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def step_state(output_dir: Path, step: Step) -> str:
    """done | changed (finished with other settings) | resume (a checkpoint / cached answers wait) | todo."""
    marker = read_marker(output_dir, step)
    if marker is not None:
        return "done" if marker.get("fingerprint") == step.fingerprint else "changed"
    if step.training and latest_checkpoint(step.output) is not None:
        return "resume"
    if step.command == "eval" and (step.output / "cache.jsonl").is_file():
        return "resume"
    return "todo"


def latest_checkpoint(run_dir: Path) -> Path | None:
    from ..train.checkpointing import list_checkpoints  # torch: not for --help or planning

    found = list_checkpoints(run_dir) if run_dir.is_dir() else []
    return found[-1][1] if found else None


@contextlib.contextmanager
def _own_process_state():
    """A command run in this process may assume a process of its own and set logger levels or add handlers (the
    trainer itself swaps its train.log handler per run). Put the root and package loggers back afterwards, so
    that one step's logging set-up never leaks into the next step."""
    touched = [logging.getLogger(), logging.getLogger("mllm")]
    saved = [(lg, list(lg.handlers), lg.level) for lg in touched]
    try:
        yield
    finally:
        for lg, handlers, level in saved:
            for handler in [h for h in lg.handlers if h not in handlers]:
                lg.removeHandler(handler)
                handler.close()
            lg.setLevel(level)


def _release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class RecipeRunner:
    def __init__(self, output_dir: str | Path, steps: list[Step]):
        self.output_dir = Path(output_dir)
        self.steps = steps

    def check_unchanged(self) -> None:
        """Refuse before any work when a finished step would now run a different command."""
        changed = [s.id for s in self.steps if step_state(self.output_dir, s) == "changed"]
        if changed:
            raise UserError(
                f"finished step(s) {', '.join(changed)} ran with other settings than this recipe now asks for; "
                f"use another --output-dir, or delete their markers in {self.output_dir / MARKER_DIR} and their "
                "output folders to redo them")

    def run(self) -> list[StepResult]:
        self.check_unchanged()
        results = []
        for n, step in enumerate(self.steps, 1):
            marker = read_marker(self.output_dir, step)
            head = f"[{n}/{len(self.steps)}] {step.id}"
            if marker is not None:
                print(f"{head}: done earlier ({marker.get('finished')}), skipped", flush=True)
                results.append(StepResult(step, "done", marker.get("seconds", 0.0), marker))
                continue
            args = self._resume_args(step)
            print(f"{head}: {shlex.join(['llm2clip-llava', step.command, *args])}", flush=True)
            started = time.time()
            try:
                self._execute(step, args)
            except BaseException:
                print(f"{head}: stopped after {time.time() - started:.0f} s; the finished steps are kept, run the "
                      "same command again to resume", file=sys.stderr, flush=True)
                raise
            finally:
                _release_memory()
            seconds = round(time.time() - started, 2)
            info = {"step": step.id, "command": step.command, "args": args, "fingerprint": step.fingerprint,
                    "seconds": seconds, "num_processes": step.num_processes,
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "output": str(step.output)}
            write_marker(self.output_dir, step, info)
            print(f"{head}: finished in {seconds:.1f} s", flush=True)
            results.append(StepResult(step, "ran", seconds, info))
        return results

    @staticmethod
    def _resume_args(step: Step) -> list[str]:
        if not step.training:
            return list(step.args)
        checkpoint = latest_checkpoint(step.output)
        if checkpoint is None:
            return list(step.args)
        print(f"  resuming {step.id} from {checkpoint}", flush=True)
        return [*step.args, "--resume_from", str(step.output)]

    def _execute(self, step: Step, args: list[str]) -> None:
        if step.training and (step.num_processes > 1 or step.accelerate_config):
            cmd = [sys.executable, "-m", "accelerate.commands.launch"]
            if step.accelerate_config:
                cmd += ["--config_file", step.accelerate_config]
            cmd += ["--num_processes", str(step.num_processes), "-m", "mllm.cli", step.command, *args]
            status = subprocess.call(cmd)
        elif step.training:
            with _own_process_state():
                status = train_cli.main([step.command, *args])
        elif step.command == "eval":
            with _own_process_state():
                status = eval_cli.main(args)
        else:
            with _own_process_state():
                status = compare.main(args)
        if status:
            raise StepFailed(f"step {step.id} failed: `llm2clip-llava {step.command}` exited with status {status} "
                             "(its message is above); the finished steps are kept, run the same command to resume")
