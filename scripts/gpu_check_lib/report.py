"""The README's GPU table from a results JSON (`python scripts/gpu_check.py --table results.json`)."""
from __future__ import annotations


def _num(value, fmt: str = ",.0f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{suffix}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _memory(entry: dict) -> str:
    if "peak_allocated_gib" in entry:
        return f"{entry['peak_allocated_gib']:.1f} / {entry['peak_reserved_gib']:.1f} GiB"
    memory = entry.get("memory") or {}
    if memory:
        return f"{memory['peak_allocated_gib']:.1f} / {memory['peak_reserved_gib']:.1f} GiB"
    return "n/a"


def _training_row(label: str, entry: dict) -> str:
    return (f"| {label} | {_num(entry['tokens_per_s'])} tokens/s (best {_num(entry['tokens_per_s_best'])}) | "
            f"MFU {_pct(entry.get('mfu'))}, HFU {_pct(entry.get('hfu'))} | {_memory(entry)} |")


def _generation_rows(label: str, phase: dict, other: dict | None) -> list[str]:
    rows = []
    gen = phase.get("generation", {})
    for key, entry in gen.items():
        note = ""
        agreement = entry.get("agreement_with_batch_1")
        if agreement:
            note = (f"{agreement['rows_identical']}/{agreement['rows']} rows identical to batch 1, "
                    f"{_pct(agreement['token_agreement'])} of tokens")
        elif other and "tokens" in entry and "tokens" in other.get("generation", {}).get(key, {}):
            reference = other["generation"][key]["tokens"]
            same = sum(a == b for r, o in zip(entry["tokens"], reference) for a, b in zip(r, o))
            note = f"{_pct(same / sum(len(r) for r in reference))} of tokens equal to the other serving mode"
        rows.append(f"| {label}, {key.replace('_', ' ')} | {_num(entry['tokens_per_s'], ',.1f')} tokens/s | "
                    f"{note} | {_memory(phase)} |")
    return rows


def render_table(data: dict) -> str:
    """Markdown: one row per measurement; failed and skipped phases say so."""
    phases = data.get("phases", {})
    device = phases.get("preflight", {}).get("device", {}).get("name", data.get("device", "?"))
    lines = [f"GPU check on {device} ({'tiny, CPU' if data.get('tiny') else 'full size'}), "
             f"total {data.get('total_s', '?')} s{'' if data.get('finished') else ' (did not finish)'}", "",
             "| measurement | throughput | utilisation / agreement | peak allocated / reserved |", "|---|---|---|---|"]
    for name, phase in phases.items():
        status = phase.get("status")
        if status != "ok" and not (name == "preflight" and "checks" in phase):
            lines.append(f"| {name} | {status}: {phase.get('error') or phase.get('reason') or ''} | | |")
            continue
        if name == "preflight":
            matmul = phase.get("checks", {}).get("matmul", {})
            failed = [k for k, v in phase.get("checks", {}).items() if not v.get("ok")]
            lines.append(f"| pre-flight ({phase.get('seconds', '?')} s) | bf16 matmul "
                         f"{_num(matmul.get('tflops'), ',.0f')} TFLOP/s | {_pct(matmul.get('fraction_of_peak'))} of the datasheet peak | "
                         f"{'failed: ' + ', '.join(failed) if failed else 'all checks passed'} |")
        elif name == "stage2_qlora":
            lines.append(_training_row("stage-2 QLoRA, unpadded", phase["unpadded"]))
            padded = phase["right_padded"]
            lines.append(_training_row(f"stage-2 QLoRA, right-padded ({_num(padded['speed_vs_unpadded'], '.2f')}x)",
                                       padded))
        elif name == "stage1_projector":
            lines.append(_training_row("stage 1 (projector only, frozen LLM)", phase["unpadded"]))
        elif name == "tower_forward":
            lines.append(f"| tower forward, {phase['dtype']}, batch {phase['batch']} | "
                         f"{_num(phase['images_per_s'], ',.1f')} img/s | MFU {_pct(phase.get('mfu'))} | "
                         f"{_memory(phase)} |")
        elif name == "generation_4bit":
            lines += _generation_rows("generation, 4-bit + adapter", phase, phases.get("generation_merged"))
        elif name == "generation_merged":
            lines += _generation_rows("generation, merged bf16", phase, phases.get("generation_4bit"))
        elif name == "projector_tokens":
            for projector in ("mlp2x_gelu", "pixel_shuffle2_mlp2x_gelu"):
                entry = phase[projector]
                prefill = _num(1000 * entry["prefill_s_median"], ",.0f")
                lines.append(_training_row(f"QLoRA, {entry['image_tokens']} image + {phase['text_tokens']} text "
                                           f"tokens ({projector}; prefill {prefill} ms)", entry))
            ratios = phase["ratios_pixel_shuffle_vs_mlp"]
            lines.append(f"| pixel shuffle vs mlp2x_gelu | {_num(ratios['train_samples_per_s'], '.2f')}x samples/s | "
                         f"prefill {_num(ratios['prefill_speedup'], '.2f')}x faster, image KV cache "
                         f"{_num(ratios['kv_image_reduction'], '.1f')}x smaller | "
                         f"{_num(ratios.get('peak_allocated_reduction'), '.2f', 'x less peak memory')} |")
        elif name == "setup_llm":
            llm = phase.get("llm", {})
            lines.append(f"| set-up: random LLM, {_num(llm.get('params'))} parameters | "
                         f"{llm.get('seconds', '?')} s | | |")
        else:  # phases added later show their status and time until given a row of their own here
            lines.append(f"| {name} | ok in {phase.get('seconds', '?')} s | | |")
    return "\n".join(lines)
