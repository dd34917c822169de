"""Run phases one after another so that a lent GPU's few minutes are never wasted.

After every phase (and every partial result a phase records) the whole results JSON is rewritten atomically,
so a kill, a hang or an out-of-memory loses only the phase in flight. A phase that raises is recorded with its
error and the next one runs; memory is released between phases (`gc.collect()` first: 4-bit weights outlive
`del model` until the collector breaks their reference cycles); a phase whose estimate does not fit in what is
left of the time budget is skipped, and a watchdog ends a run that hangs past the budget after dumping every
thread's stack to the log.
"""
from __future__ import annotations

import faulthandler
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

GIB = 2 ** 30


@dataclass(frozen=True)
class Phase:
    """One measurement: `run(workload, record)` returns its results (record(dict) saves partial ones early)."""

    name: str
    run: Callable
    estimate_s: float  # on one H100/H200; a phase that would overrun the time budget is skipped
    needs: tuple[str, ...] = ()  # capabilities the pre-flight must have found working (e.g. "bitsandbytes")
    description: str = ""


class Results:
    """The results JSON, rewritten whole (temp file + rename) after every change."""

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        self.data = {**header, "finished": False, "phases": {}}
        self.write()

    def phase(self, name: str, **values) -> None:
        self.data["phases"].setdefault(name, {}).update(values)
        self.write()

    def set(self, **values) -> None:
        self.data.update(values)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=2, default=_jsonable)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _jsonable(value):
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value).replace("torch.", "")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def memory_report(device: torch.device) -> dict | None:
    """Peaks since the last reset (allocated: tensors; reserved: the caching allocator's total) and free memory."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return {
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GIB, 3),
        "allocated_gib": round(torch.cuda.memory_allocated(device) / GIB, 3),
        "reserved_gib": round(torch.cuda.memory_reserved(device) / GIB, 3),
        "device_free_gib": round(free / GIB, 3),
        "device_total_gib": round(total / GIB, 3),
    }


def reset_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def release_memory(device: torch.device) -> None:
    """Free what the last phase left behind, cycles included, and start the next phase's peaks from here."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    reset_peaks(device)


@dataclass
class Runner:
    """Runs `phases` against `workload` within `budget_s` seconds, recording into `results`."""

    results: Results
    device: torch.device
    budget_s: float
    log: Callable[[str], None] = print
    watchdog_grace_s: float = 30.0
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run(self, phases: list[Phase], workload) -> bool:
        """True when every phase succeeded."""
        all_ok = True
        for phase in phases:
            status = self._run_one(phase, workload)
            all_ok = all_ok and status == "ok"
        faulthandler.cancel_dump_traceback_later()
        self.results.set(finished=True, total_s=round(self.elapsed(), 1))
        return all_ok

    def _skip_reason(self, phase: Phase, workload) -> str | None:
        broken = [need for need in phase.needs if need in workload.broken]
        if broken:
            return f"skipped: the pre-flight found {', '.join(broken)} not working"
        left = self.budget_s - self.elapsed()
        if phase.estimate_s > left:
            return f"skipped: needs ~{phase.estimate_s:.0f} s, {left:.0f} s of the {self.budget_s:.0f} s budget left"
        return None

    def _run_one(self, phase: Phase, workload) -> str:
        reason = self._skip_reason(phase, workload)
        if reason:
            self.results.phase(phase.name, status="skipped", reason=reason)
            self.log(f"[gpu_check] {phase.name}: {reason}")
            return "skipped"
        self.log(f"[gpu_check] {phase.name}: start at {self.elapsed():.0f} s ({phase.description})")
        self.results.phase(phase.name, status="running", started_at_s=round(self.elapsed(), 1))
        # a hang must not eat the device call: dump every stack to the log and exit once the budget is spent
        faulthandler.dump_traceback_later(max(1.0, self.budget_s - self.elapsed()) + self.watchdog_grace_s,
                                          exit=True)
        reset_peaks(self.device)
        start = time.monotonic()
        try:
            values = phase.run(workload, lambda partial: self.results.phase(phase.name, **partial)) or {}
            status, extra = "ok", {}
        except Exception as exc:  # recorded; the next phase still runs
            values = {}
            status = "failed"
            extra = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                     "traceback": traceback.format_exc()[-4000:]}
            self.log(f"[gpu_check] {phase.name}: FAILED {extra['error']}\n{extra['traceback']}")
            del exc
        seconds = round(time.monotonic() - start, 2)
        memory = memory_report(self.device)
        self.results.phase(phase.name, **values, **extra, status=status, seconds=seconds, memory=memory)
        release_memory(self.device)
        after = memory_report(self.device)
        if after is not None:
            self.results.phase(phase.name, memory_after_release_gib=after["allocated_gib"])
        summary = phase_summary(values)
        self.log(f"[gpu_check] {phase.name}: {status} in {seconds:.1f} s{summary}")
        sys.stdout.flush()
        return status


def phase_summary(values: dict) -> str:
    """A short line of a phase's headline numbers for the log."""
    keys = ("tokens_per_s", "mfu", "images_per_s")
    found = []

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in keys and isinstance(v, (int, float)):
                    found.append(f"{prefix}{k}={v:.3g}")
                elif isinstance(v, dict) and len(found) < 8:
                    walk(f"{prefix}{k}.", v)

    walk("", values)
    return (": " + ", ".join(found[:8])) if found else ""
