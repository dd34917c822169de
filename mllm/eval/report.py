"""What an evaluation run leaves behind: predictions JSONL, metrics JSON, a markdown table, a summary line.

``metrics.json`` is self-describing so that ``compare`` (and a reader a year later) needs nothing else: the
scores, the headline metric, which checkpoint (manifest, tower, base LLM), which benchmark files and
options, how it was decoded, how long it took, and how many items were skipped and why.
"""
from __future__ import annotations

import json
import math
import platform
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__

METRICS_FORMAT = "llm2clip-llava-eval-metrics"
MAX_TABLE_ROWS = 60


def _versions() -> dict:
    import torch
    import transformers

    return {"llm2clip_llava": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _manifest(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _run_block(config, source: dict) -> tuple[dict, dict]:
    """(run, generation) blocks: the checkpoint and how it decoded, or the answers file that was re-scored."""
    model_dir = source.get("model_dir")
    if model_dir is None:
        run = {"label": source["label"], "model": None, "tower": None, "tower_checkpoint": None, "llm": None,
               "template": None, "manifest": {}, "answers_file": source["answers_file"],
               "answers_format": source["answers_format"], "model_id": source.get("model_id")}
        return run, {"source": "answers file", "max_new_tokens": None}
    manifest = _manifest(model_dir)
    tower = manifest.get("tower") or {}
    run = {"label": source["label"], "model": str(model_dir.resolve()),
           "tower": tower.get("name") or tower.get("checkpoint"), "tower_checkpoint": tower.get("checkpoint"),
           "llm": manifest.get("llm"), "template": manifest.get("template"), "manifest": manifest}
    generation = {"greedy": True, "protocol": config.protocol, "batch_size": config.batch_size,
                  "max_new_tokens": config.max_new_tokens, "device": source["device"], "dtype": config.dtype or "auto",
                  "quantization": config.quantization, "merge_on_load": config.merge_on_load}
    return run, generation


def build_metrics(*, bench, options: dict, config, source: dict, score, n_items: int, n_available: int,
                  skipped: list, generated: int, reused: int, stale: int, timing: dict, submission: list[str]) -> dict:
    run, generation = _run_block(config, source)
    main_metric = score.metrics.get("main_metric", bench.main_metric)
    gen_s = timing.get("generate_s") or 0.0
    out = {
        "format": METRICS_FORMAT,
        "benchmark": bench.name,
        "display_name": bench.display_name or bench.name,
        "main_metric": main_metric,
        "main": score.metrics.get(main_metric),
        "n": n_items,
        "n_available": n_available,
        "limit": config.limit,
        "skipped": {"count": len(skipped), "by_reason": dict(Counter(e.reason for _, e in skipped)),
                    "items": [{"question_id": q, "reason": e.reason, "path": e.path} for q, e in skipped[:100]]},
        "metrics": score.metrics,
        "benchmark_options": options,
        "data": str(Path(config.data).resolve()),
        "run": run,
        "generation": generation,
        "timing": {**{k: round(v, 3) for k, v in timing.items()}, "generated": generated, "reused_from_cache": reused,
                   "stale_cache_entries": stale,
                   "items_per_s": round(generated / gen_s, 3) if generated and gen_s > 0 else None},
        "submission_files": submission,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if "answers_report" in source:
        out["answers"] = source["answers_report"]
    return out


def format_value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def flatten_scalars(metrics: dict, prefix: str = "", depth: int = 3) -> list[tuple[str, object]]:
    """``(dotted.key, value)`` for the numeric leaves of nested metrics (lists and text left out)."""
    out = []
    for key, value in metrics.items():
        if key in ("benchmark", "main_metric", "notes"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth > 1:
            out += flatten_scalars(value, name + ".", depth - 1)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
            out.append((name, value))
    return out


def markdown_report(metrics: dict) -> str:
    """One run as markdown: headline, every numeric metric, provenance and notes."""
    m = metrics
    main = m["main_metric"]
    rows = [(k, v) for k, v in flatten_scalars(m["metrics"]) if k != main]
    lines = [f"# {m['display_name']}: {m['run']['label']}", "",
             "| metric | value |", "|---|---:|", f"| **{main}** | **{format_value(m['main'])}** |"]
    lines += [f"| {k} | {format_value(v)} |" for k, v in rows[:MAX_TABLE_ROWS]]
    if len(rows) > MAX_TABLE_ROWS:
        lines.append(f"| … {len(rows) - MAX_TABLE_ROWS} more in metrics.json | |")
    t = m["timing"]
    opts = ", ".join(f"{k}={v}" for k, v in m["benchmark_options"].items())
    run = m["run"]
    if run["model"] is None:
        a = m.get("answers") or {}
        source = (f"- answers: `{run['answers_file']}` ({run['answers_format']} format"
                  + (f", model_id {run['model_id']}" if run.get("model_id") else "") + "), re-scored without a model")
        done = (f"- {a.get('matched')} questions answered; unknown ids {a.get('unknown', {}).get('count')}, "
                f"repeated {a.get('duplicate', {}).get('count')}, missing {a.get('missing', {}).get('count')}; "
                f"total {t['total_s']:.1f} s")
    else:
        source = f"- model: `{run['model']}` (tower: {run['tower']}, LLM: {run['llm']})"
        done = (f"- generated {t['generated']} ({t['reused_from_cache']} from cache) in {t['generate_s']:.1f} s; "
                f"total {t['total_s']:.1f} s")
    lines += ["", source, f"- data: `{m['data']}`" + (f"; options: {opts}" if opts else ""),
              f"- items: {m['n']}" + (f" of {m['n_available']} (limit {m['limit']})" if m["limit"] else "")
              + f"; skipped: {m['skipped']['count']}", done]
    notes = m["metrics"].get("notes") or []
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    if m["submission_files"]:
        lines += ["", "Files to submit / judge:"] + [f"- `{p}`" for p in m["submission_files"]]
    return "\n".join(lines) + "\n"


def write_outputs(output_dir: Path, items, predictions: dict, score, metrics: dict, skipped: list) -> dict:
    """predictions.jsonl (item order, with per-sample scores), metrics.json and metrics.md."""
    output_dir = Path(output_dir)
    skip_reason = {q: e.reason for q, e in skipped}
    pred_path = output_dir / "predictions.jsonl"
    with open(pred_path, "w", encoding="utf-8") as f:
        for it in items:
            details = dict(score.per_sample.get(it.question_id) or {})
            row = {"question_id": it.question_id, "prediction": predictions.get(it.question_id),
                   "score": details.pop("score", None)}
            if it.question_id in skip_reason:
                row["skipped"] = skip_reason[it.question_id]
            row.update(details=details, prompt=it.prompt, images=list(it.images), target=it.target)
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    metrics_path = output_dir / "metrics.json"
    files = {"predictions": str(pred_path), "metrics": str(metrics_path), "markdown": str(output_dir / "metrics.md"),
             "cache": str(output_dir / "cache.jsonl"), "submission": metrics["submission_files"]}
    metrics["files"] = files
    metrics_path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    (output_dir / "metrics.md").write_text(markdown_report(metrics), encoding="utf-8")
    return files


def print_summary(metrics: dict, files: dict) -> None:
    t = metrics["timing"]
    rate = f", {t['items_per_s']:.2f} items/s" if t.get("items_per_s") else ""
    how = (f"re-scored {metrics['run']['answers_file']}" if metrics["run"]["model"] is None else
           f"{t['generated']} generated, {t['reused_from_cache']} from cache{rate}")
    print(f"{metrics['display_name']} [{metrics['run']['label']}] {metrics['main_metric']} = "
          f"{format_value(metrics['main'])}  (n={metrics['n']}, skipped {metrics['skipped']['count']}; "
          f"{how}; {t['total_s']:.1f} s)")
    for note in metrics["metrics"].get("notes") or []:
        print(f"  note: {note}")
    print(f"  metrics: {files['metrics']}\n  table:   {files['markdown']}\n  answers: {files['predictions']}")
    for path in files["submission"]:
        print(f"  submit:  {path}")
