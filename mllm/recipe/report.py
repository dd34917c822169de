"""What the recipe prints: the plan up front (steps, state, expected GPU hours and disk) and, at the end, the
report (`REPORT.md`: the comparison with deltas, the paper's numbers next to it, the chart, every metrics
file, the time each step took)."""
from __future__ import annotations

import json
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from .config import RecipeConfig
from .plan import Step
from .runner import StepResult, read_marker, step_state

STATE_TEXT = {"done": "done", "resume": "resumes", "todo": "to run", "changed": "CHANGED"}


def _hours(h: float) -> str:
    """A duration given in hours, in the unit that reads best."""
    if math.isnan(h):
        return "?"
    if h >= 1:
        return f"{h:,.1f} h"
    return f"{h * 60:.1f} min" if h * 60 >= 1 else f"{h * 3600:.0f} s"


def _gb(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 0.1 else f"{gb * 1000:.1f} MB"


def format_plan(config: RecipeConfig, steps: list[Step]) -> str:
    out = Path(config.output_dir)
    states = [step_state(out, s) for s in steps]
    size = config.llm_size
    lines = [f"Recipe {config.name} ({config.source})",
             f"  LLM {config.llm} ({size.params_b:g} B params) | data {config.data_root} | output {config.output_dir}",
             "  towers: " + "; ".join(f"{t.label} = " + " ".join(x for x in (t.tower, t.tower_checkpoint) if x)
                                        for t in config.towers),
             f"  stage 1: preset {config.stage1.preset} on {config.stage1.num_processes} process(es); stage 2: "
             f"preset {config.stage2.preset} on {config.stage2.num_processes} process(es)",
             f"  benchmarks: {', '.join(b.name for b in config.benchmarks)}", ""]
    width = max(len(s.id) for s in steps)
    lines.append(f"  {'#':>3}  {'step':<{width}}  {'command':<8}  {'A100 time':>9}  {'wall':>9}  {'disk':>9}  state")
    total_h = total_wall = total_disk = 0.0
    todo_h = 0.0
    for n, (step, state) in enumerate(zip(steps, states), 1):
        est = step.estimate
        wall = est.gpu_hours / max(step.num_processes, 1)
        extra = f" (mode {step.meta['mode']})" if "mode" in step.meta else ""
        lines.append(f"  {n:>3}  {step.id:<{width}}  {step.command:<8}  {_hours(est.gpu_hours):>9}  "
                     f"{_hours(wall):>9}  {_gb(est.disk_gb):>9}  {STATE_TEXT[state]}{extra}")
        if not math.isnan(est.gpu_hours):
            total_h += est.gpu_hours
            total_wall += wall
            todo_h += est.gpu_hours if state != "done" else 0.0
        total_disk += est.disk_gb
    done = states.count("done")
    lines += ["", f"  {len(steps)} steps ({done} done, {len(steps) - done} to run): ~{_hours(total_h)} of A100 time "
                  f"in all (~{_hours(todo_h)} left), ~{_hours(total_wall)} of wall time on the configured processes; "
                  f"outputs ~{_gb(total_disk)}"]
    usage = _disk_free(out)
    if usage is not None:
        lines.append(f"  free space where the outputs go: {_gb(usage)}"
                     + ("  <-- less than the outputs need" if usage < total_disk else ""))
    lines += ["  how the estimates are made (A100-hours: all processes together):"]
    bases = dict.fromkeys(s.estimate.basis for s in steps if s.command != "compare")
    lines += [f"    {basis}" for basis in bases]
    return "\n".join(lines)


def _disk_free(path: Path) -> float | None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free / 1e9
    except OSError:
        return None


def write_report(config: RecipeConfig, steps: list[Step], results: list[StepResult]) -> Path:
    """REPORT.md in the output folder: the comparison (with the paper's published numbers where the recipe
    lists them), the chart, links to every metrics file and the time of every step."""
    out = Path(config.output_dir)
    compare_dir = out / "comparison"
    lines = [f"# {config.name}", "",
             f"Recipe `{config.source}`, written {datetime.now(timezone.utc).isoformat(timespec='seconds')}. "
             f"LLM `{config.llm}`; data `{config.data_root}`; stage 2 preset `{config.stage2.preset}`.", ""]
    comparison = compare_dir / "comparison.json"
    if comparison.is_file():
        comp = json.loads(comparison.read_text(encoding="utf-8"))
        lines += _comparison_table(config, comp)
        lines += ["", f"![comparison]({os.path.relpath(compare_dir / 'comparison.png', out)})", "",
                  f"Table with notes: [{os.path.relpath(compare_dir / 'comparison.md', out)}]"
                  f"({os.path.relpath(compare_dir / 'comparison.md', out)})", ""]
    lines += ["## Metrics files", ""]
    for step in steps:
        if step.metrics is not None:
            rel = os.path.relpath(step.metrics, out)
            lines.append(f"- {step.tower.label} / {step.id.rsplit('/', 1)[-1]}: [{rel}]({rel})"
                         + ("" if step.metrics.is_file() else " (missing)"))
    lines += ["", "## Steps", "", "| step | command | wall time | processes | finished | estimate (A100 time) |",
              "|---|---|---:|---:|---|---:|"]
    by_id = {r.step.id: r for r in results}
    for step in steps:
        marker = read_marker(out, step) or {}
        seconds = by_id[step.id].seconds if step.id in by_id else marker.get("seconds", 0.0)
        lines.append(f"| {step.id} | {step.command} | {_hours(seconds / 3600)} | {step.num_processes} | "
                     f"{marker.get('finished', '—')} | {_hours(step.estimate.gpu_hours)} |")
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _comparison_table(config: RecipeConfig, comp: dict) -> list[str]:
    runs = [r["label"] for r in comp["runs"]]
    paper = {t.label: t.paper for t in config.towers}
    has_paper = any(paper.get(label) for label in runs)
    head = ["Benchmark", "Metric", runs[0]] + [c for label in runs[1:] for c in (label, f"Δ {label}")]
    if has_paper:
        head += [f"paper: {label}" for label in runs]
    lines = ["## Results", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for row in comp["rows"]:
        values = row["values"]
        cells = [row["title"], row["metric"], _num(values[0])]
        for v in values[1:]:
            cells += [_num(v), "—" if v is None or values[0] is None else f"{v - values[0]:+.2f}"]
        if has_paper:
            bench = row["key"].split(" ")[0]
            main = row["metric"] == _main_metric(comp, row)
            cells += [_num(paper.get(label, {}).get(bench)) if main else "" for label in runs]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Δ: difference to {runs[0]}."]
    if has_paper:
        lines.append("paper: the LLM2CLIP paper's published numbers for the same comparison (from the recipe file).")
    lines += [f"- {note}" for note in comp.get("notes") or []]
    return lines


def _main_metric(comp: dict, row: dict) -> str:
    same = [r for r in comp["rows"] if r["key"] == row["key"]]
    return same[0]["metric"]  # compare lists each benchmark's headline metric first


def _num(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def format_final(report: Path, results: list[StepResult]) -> str:
    ran = [r for r in results if r.status == "ran"]
    text = report.read_text(encoding="utf-8")
    summary = (f"{len(ran)} step(s) run, {len(results) - len(ran)} finished earlier and skipped; "
               f"report: {report}")
    return text + "\n" + summary
