"""``llm2clip-llava compare``: runs' metrics.json files -> one markdown table (deltas vs the first run) and a
bar chart, e.g. the same recipe trained with the OpenAI CLIP tower and with the LLM2CLIP tower.

A run is a ``metrics.json`` file or a folder searched recursively for them (``eval`` writes one per
benchmark under ``eval_results/<model>/<benchmark>/``); ``LABEL=PATH`` names it. Rows are benchmark x metric;
a benchmark evaluated with non-default options is its own row (TextVQA with and without OCR tokens are not
the same number). Runs that lack a row, or scored it on a different number of items, are named in the notes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..checks import output_dir
from .report import METRICS_FORMAT, format_value
from .suites import BENCHMARK_NAMES, BENCHMARKS


@dataclass
class Run:
    label: str
    source: str
    results: dict[str, dict] = field(default_factory=dict)  # row key -> metrics.json content


@dataclass
class Row:
    key: str  # benchmark[ (options)]
    title: str  # display name [ (options)]
    metric: str  # dotted path into metrics["metrics"]
    values: list[float | None]
    n: list[int | None]


@dataclass
class Comparison:
    runs: list[Run]
    rows: list[Row]
    notes: list[str]

    def to_dict(self) -> dict:
        return {"runs": [{"label": r.label, "source": r.source, "benchmarks": sorted(r.results)} for r in self.runs],
                "rows": [vars(r) for r in self.rows], "notes": self.notes}


def _non_default_options(metrics: dict) -> dict:
    cls = BENCHMARKS.get(metrics.get("benchmark"))
    defaults = cls.options() if cls else {}
    def norm(value):  # tuples (defaults) and lists (read from JSON) compare equal
        return json.loads(json.dumps(value))

    return {k: v for k, v in (metrics.get("benchmark_options") or {}).items()
            if k not in ("image_dir", "image_cache_dir") and norm(v) != norm(defaults.get(k))}


def row_key(metrics: dict) -> tuple[str, str]:
    """(key, title): the benchmark, plus its non-default options (which change what is measured)."""
    opts = _non_default_options(metrics)
    suffix = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(opts.items()))
    name, title = metrics["benchmark"], metrics.get("display_name") or metrics["benchmark"]
    return (f"{name} ({suffix})", f"{title} ({suffix})") if suffix else (name, title)


def _read_metrics(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict) or data.get("format") != METRICS_FORMAT:
        raise ValueError(f"{path}: not a metrics.json written by `llm2clip-llava eval`")
    return data


def load_run(spec: str) -> Run:
    """``PATH`` or ``LABEL=PATH``; PATH is a metrics.json file or a folder holding them (recursively)."""
    label, _, path_text = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
    path = Path(path_text)
    if path.is_dir():
        files = sorted(path.rglob("metrics.json"))
        if not files:
            raise ValueError(f"{path}: no metrics.json files under this folder")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"{path}: no such file or folder")
    results, origin = {}, {}
    for f in files:
        m = _read_metrics(f)
        key, _ = row_key(m)
        if key in results:
            raise ValueError(f"{path} holds two results for {key}: {origin[key]} and {f}; pass the one you mean")
        results[key], origin[key] = m, f
    if not label:
        labels = {m["run"]["label"] for m in results.values()}
        label = labels.pop() if len(labels) == 1 else path.name
    return Run(label, str(path), results)


def _lookup(metrics: dict, dotted: str):
    value = metrics.get("metrics", {})
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compare_runs(runs: list[Run], extra_metrics: list[str] = ()) -> Comparison:
    """Rows for every benchmark any run has (first-seen order), main metric first, then ``bench:metric``
    extras; missing values are None and named in the notes."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"run labels must differ, got {labels}; name them with LABEL=PATH")

    order = {name: i for i, name in enumerate(BENCHMARK_NAMES)}  # LLaVA-1.5's table order
    first_seen = list(dict.fromkeys(k for r in runs for k in r.results))
    bench_of = {k: next(r.results[k]["benchmark"] for r in runs if k in r.results) for k in first_seen}
    keys = sorted(first_seen, key=lambda k: (order.get(bench_of[k], len(order)), first_seen.index(k)))
    extras: dict[str, list[str]] = {}
    for spec in extra_metrics:
        bench, sep, metric = spec.partition(":")
        if not sep or not metric:
            raise ValueError(f"--metric {spec!r}: expected BENCHMARK:METRIC (e.g. mme:cognition)")
        extras.setdefault(bench, []).append(metric)
    rows, notes = [], []
    for key in keys:
        present = [r.results.get(key) for r in runs]
        first = next(m for m in present if m is not None)
        _, title = row_key(first)
        for metric in [first["main_metric"], *extras.get(first["benchmark"], [])]:
            values = [None if m is None else _lookup(m, metric) for m in present]
            rows.append(Row(key, title, metric, values, [None if m is None else m.get("n") for m in present]))
        missing = [r.label for r, m in zip(runs, present) if m is None]
        if missing:
            notes.append(f"{title}: no result for {', '.join(missing)}")
        ns = {m.get("n") for m in present if m is not None}
        if len(ns) > 1:
            counts = ", ".join(f"{r.label}: {m.get('n')}" for r, m in zip(runs, present) if m is not None)
            notes.append(f"{title}: runs scored different numbers of items ({counts}); not directly comparable")
        for r, m in zip(runs, present):
            if m is not None and m.get("main") is None:
                notes.append(f"{title} [{r.label}]: no local score (server-side or judge not configured; "
                             "see its metrics.md)")
    for bench in extras:
        if not any(r.results.get(k, {}).get("benchmark") == bench for r in runs for k in r.results):
            notes.append(f"--metric {bench}:...: no run has benchmark {bench!r}")
    return Comparison(runs, rows, notes)


def _delta(value, base) -> str:
    if value is None or base is None:
        return "—"
    return f"{value - base:+.2f}"


def to_markdown(comp: Comparison, title: str = "Comparison") -> str:
    head = ["Benchmark", "Metric", comp.runs[0].label]
    for r in comp.runs[1:]:
        head += [r.label, f"Δ {r.label}"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for row in comp.rows:
        cells = [row.title, row.metric, format_value(row.values[0])]
        for v in row.values[1:]:
            cells += [format_value(v), _delta(v, row.values[0])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Δ: difference to {comp.runs[0].label}.", "", "Runs:"]
    for r in comp.runs:
        any_m = next(iter(r.results.values()))["run"]
        what = (f"`{any_m.get('model')}`; tower {any_m.get('tower')}; LLM {any_m.get('llm')}" if any_m.get("model")
                else f"answers `{any_m.get('answers_file')}` re-scored (model_id {any_m.get('model_id')})")
        lines.append(f"- **{r.label}**: {what} ({len(r.results)} benchmark(s) from `{r.source}`)")
    if comp.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in comp.notes]
    return "\n".join(lines) + "\n"


def plot(comp: Comparison, path: str | Path, title: str = "Comparison") -> Path:
    """One small bar chart per row (scales differ: MME is out of 2000, accuracies out of 100), each bar
    labelled with its value and its delta to the first run; rows no run has a score for are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in comp.rows if any(v is not None for v in r.values)]
    n = max(len(rows), 1)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 2.9 * nrows + 0.6), squeeze=False)
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(comp.runs))]
    labels = [r.label for r in comp.runs]
    for ax, row in zip(axes.flat, rows):
        heights = [0.0 if v is None else v for v in row.values]
        bars = ax.bar(range(len(labels)), heights, color=colours)
        top = max([abs(v) for v in row.values if v is not None], default=1.0) or 1.0
        for i, (bar, v) in enumerate(zip(bars, row.values)):
            text = "n/a" if v is None else f"{v:.1f}"
            if i and v is not None and row.values[0] is not None:
                text += f"\n({v - row.values[0]:+.1f})"
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + top * 0.02, text, ha="center",
                    va="bottom", fontsize=8)
        ax.set_title(f"{row.title}\n{row.metric}", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=15 if len(labels) > 2 else 0)
        ax.set_ylim(0, top * 1.25)
        ax.tick_params(axis="y", labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    if not rows:
        axes.flat[0].text(0.5, 0.5, "no run has a local score to plot", ha="center", va="center")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm2clip-llava compare",
        description="Compare evaluation runs: a markdown table with deltas against the first run and a bar chart.")
    p.add_argument("runs", nargs="+", metavar="[LABEL=]PATH",
                   help="a metrics.json, or a folder with one per benchmark (e.g. eval_results/<model>)")
    p.add_argument("--metric", action="append", default=[], metavar="BENCHMARK:METRIC",
                   help="extra row besides each headline metric, dotted for nested ones (mme:cognition, "
                        "pope:splits.adversarial.f1); repeatable")
    p.add_argument("--output-dir", default="comparison", help="where comparison.md/.png/.json go")
    p.add_argument("--title", default="CLIP vs LLM2CLIP vision tower", help="title of the table and chart")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    output_dir(args.output_dir, "--output-dir")  # before reading anything: a bad target is one line, exit 2
    try:
        comp = compare_runs([load_run(s) for s in args.runs], args.metric)
    except ValueError as e:
        print(f"llm2clip-llava compare: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(comp, args.title)
    (out / "comparison.md").write_text(markdown, encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(comp.to_dict(), indent=2) + "\n", encoding="utf-8")
    png = plot(comp, out / "comparison.png", args.title)
    print(markdown)
    print(f"written: {out / 'comparison.md'}, {png}, {out / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
