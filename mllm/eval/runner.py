"""Run one benchmark on one checkpoint: items -> batched greedy answers -> official-equivalent scores.

Images are decoded (and resized to the tower's input size) by DataLoader workers while the model generates;
answers come from ``mllm.generation.generate_text`` (the checkpoint's own template, left-padded batches whose
output equals batch size 1). Every finished batch is appended to a prediction cache, so an interrupted run
resumes where it stopped; a run whose items are all cached never loads the model. An unreadable image is a
counted, logged skip: the item keeps no prediction, so the scorer counts it wrong (the official denominators
stay intact) and the metrics notes say how many and why.

``answers=FILE`` re-scores answers produced elsewhere (LLaVA's answers JSONL, our predictions.jsonl) with the
same scorers and writes the same files, without a model. ``protocol="llava"`` decodes as LLaVA's eval scripts
do (batch 1, fp16 on CUDA, greedy, each benchmark's token budget) instead of batched bf16.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vision_tower import ImageLoadError, load_image

from .. import checks, serialization  # `serialization.load_model` looked up when called (tests spy on it)
from ..generation import GenerationSettings, generate_text
from ..llm import base_causal_lm, resolve_dtype
from ..paths import quickstart_dir
from .answers import match_answers, read_answers
from .cache import PredictionCache, model_fingerprint
from .judge import JudgeConfig
from .report import build_metrics, print_summary, write_outputs
from .suites import get_benchmark, load_benchmark
from .types import Benchmark, EvalItem, ScoreResult

log = logging.getLogger(__name__)
MAX_LOGGED_SKIPS = 10
PROTOCOLS = ("batched", "llava")
DEFAULT_BATCH_SIZE = 8


def apply_protocol(config: "EvalConfig", device: str) -> tuple["EvalConfig", list[str]]:
    """The config with the protocol's decoding settings filled in, and notes for the metrics.

    ``llava``: LLaVA's ``model_vqa_loader`` asserts batch size 1 and runs the model in fp16 (``.half()``);
    generation is greedy with each loader's budget, which every item already carries. An explicit setting
    that contradicts the protocol is an error rather than silently overridden.
    """
    if config.protocol != "llava":
        return dataclasses.replace(config, batch_size=config.batch_size or DEFAULT_BATCH_SIZE), []
    if config.batch_size not in (None, 1):
        raise ValueError(f"--protocol llava decodes one question at a time; drop --batch-size {config.batch_size}")
    if config.dtype not in (None, "fp16"):
        raise ValueError(f"--protocol llava runs in fp16 (as LLaVA's eval scripts); drop --dtype {config.dtype}")
    notes = ["protocol llava: batch size 1, greedy, LLaVA's per-benchmark max_new_tokens"]
    on_cuda = device.startswith("cuda")
    if on_cuda:
        notes[0] += ", fp16"
    else:
        notes.append("protocol llava: LLaVA runs fp16 on CUDA; this run is on CPU, which computes in fp32")
    return dataclasses.replace(config, batch_size=1, dtype="fp16" if on_cuda else config.dtype), notes


@dataclass
class EvalConfig:
    """What ``llm2clip-llava eval`` does; ``model=None`` means the quickstart checkpoint."""

    benchmark: str
    data: str
    model: str | None = None
    options: dict = field(default_factory=dict)  # benchmark options (see parse_options)
    output_dir: str | None = None  # default: see default_output_dir
    limit: int | None = None  # first N items
    batch_size: int | None = None  # default 8 (protocol llava: 1)
    num_workers: int = 2  # DataLoader workers decoding images (0: in the main process)
    max_new_tokens: int | None = None  # override every item's budget
    device: str | None = None  # default: cuda when available, else cpu
    quantization: str | None = "auto"
    dtype: str | None = None  # default: bf16 on CUDA, fp32 on CPU
    merge_on_load: bool = False  # serve an adapter merged into a bf16 copy of its base (faster batched decoding)
    label: str | None = None  # run name in reports and `compare` (default: the model folder's name)
    overwrite: bool = False  # discard a cache written by another setup instead of refusing
    progress: bool = True
    answers: str | None = None  # re-score this answers file instead of running a model
    protocol: str = "batched"  # "batched" (default) or "llava": batch 1, fp16 on CUDA, as LLaVA's scripts

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.answers is not None and self.model is not None:
            raise ValueError("--answers re-scores an answers file without a model; drop --model (or --answers)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class EvalResult:
    metrics: dict  # the content of metrics.json
    predictions: dict[str, str]
    score: ScoreResult
    output_dir: Path
    files: dict[str, list[str] | str]
    generated: int  # items answered by the model in this run (the rest came from the cache)


def benchmark_options(bench: Benchmark) -> dict:
    """The instance's options with defaults filled in, JSON-ready (tuples as lists; no judge, no data)."""
    out = {}
    for f in dataclasses.fields(bench):  # type: ignore[arg-type]
        if f.name in ("data", "judge"):
            continue
        value = getattr(bench, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def default_output_dir(config: EvalConfig, model_dir: Path) -> Path:
    """``eval_results/<model folder>/<benchmark>[-k=v...][-protocol=llava]`` (under the quickstart folder for its
    model), so runs with other options or protocols never share a cache."""
    name = get_benchmark(config.benchmark).name
    if config.options:
        name += "-" + "-".join(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                               for k, v in sorted(config.options.items()))
    if config.protocol != "batched":
        name += f"-protocol={config.protocol}"
    root = quickstart_dir() / "eval" if config.model is None else Path("eval_results") / model_dir.resolve().name
    return root / name.replace("/", "_")


class ImageItemDataset(Dataset):
    """``dataset[i] -> (i, [PIL images] | None, ImageLoadError | None)`` for DataLoader workers.

    With an ``image_processor`` the worker also applies its geometry (pad/crop/resize to the input size) and
    returns the result as an image of exactly that size, which the processor then passes through unchanged:
    the pixels are identical, the expensive part happens in the worker.
    """

    def __init__(self, items: list[EvalItem], image_processor=None):
        self.items = items
        self.image_processor = image_processor if hasattr(image_processor, "prepare_image") else None

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, path: str) -> Image.Image:
        image = load_image(path)
        if self.image_processor is None:
            return image
        return self.image_processor.prepare_image(image)

    def __getitem__(self, index: int):
        try:
            return index, [self._load(p) for p in self.items[index].images], None
        except ImageLoadError as e:
            return index, None, e


def _as_list(batch):
    return batch


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode images; leave the cores to the model


def budget_batches(items: list[EvalItem], batch_size: int) -> list[list[int]]:
    """Index batches in item order, never mixing token budgets (one GenerationSettings per batch)."""
    groups: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.max_new_tokens, []).append(i)
    return [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


def _make_benchmark(config: EvalConfig, output_dir: Path) -> Benchmark:
    options = dict(config.options)
    cls = get_benchmark(config.benchmark)
    if "judge" in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
        options["judge"] = JudgeConfig.from_env(cache_path=str(output_dir / "judge_cache.jsonl"))
    return load_benchmark(config.benchmark, config.data, **options)


def _cache_header(config: EvalConfig, bench: Benchmark, model_dir: Path, device: str) -> dict:
    return {
        "benchmark": bench.name, "options": benchmark_options(bench), "data": str(Path(config.data).resolve()),
        "model": model_fingerprint(model_dir),
        "generation": {"dtype": str(resolve_dtype(config.dtype, device)).replace("torch.", ""),
                       "quantization": config.quantization or "none", "max_new_tokens": config.max_new_tokens,
                       "greedy": True, **({"merge_on_load": True} if config.merge_on_load else {}),
                       **({"protocol": config.protocol} if config.protocol != "batched" else {})},
    }


def _hint_merge_on_load(model, batch_size: int) -> None:
    """Say when batched decoding on a 4-bit CUDA base leaves bitsandbytes' fused 4-bit kernels."""
    if model.device.type != "cuda" or not getattr(base_causal_lm(model.llm), "is_loaded_in_4bit", False):
        return
    import bitsandbytes
    from packaging.version import Version

    fused_rows = 1 if Version(bitsandbytes.__version__) < Version("0.50") else 4  # 0.50 added gemm_4bit
    if batch_size > fused_rows:
        log.warning("4-bit LLM decoding %d rows at a time: bitsandbytes %s fuses 4-bit matmuls for up to %d row(s) "
                    "(beyond that only where its per-GPU heuristic expects a win) and otherwise dequantises every "
                    "weight at every step; --merge-on-load serves a bf16 merge, faster for batched evaluation "
                    "(7B: ~13.5 GB of GPU memory instead of ~4 GB)", batch_size, bitsandbytes.__version__, fused_rows)


def generate_pending(model, processor, items: list[EvalItem], cache: PredictionCache, batch_size: int,
                     num_workers: int, progress_bar=None) -> tuple[dict[str, str], list[tuple[str, ImageLoadError]]]:
    """Answer ``items`` batch by batch, appending each batch to ``cache``; returns answers and skips."""
    dataset = ImageItemDataset(items, getattr(processor, "image_processor", None))
    loader = DataLoader(dataset, batch_sampler=budget_batches(items, batch_size), collate_fn=_as_list,
                        num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None)
    answers, skipped = {}, []
    for batch in loader:
        ready = []
        for index, images, error in batch:
            item = items[index]
            if error is not None:
                skipped.append((item.question_id, error))
                if len(skipped) <= MAX_LOGGED_SKIPS:
                    log.warning("skipping %s: unreadable image (%s)", item.question_id, error)
            else:
                ready.append((item, images))
        if ready:
            settings = GenerationSettings(max_new_tokens=ready[0][0].max_new_tokens, temperature=0.0)
            convs = [[{"from": "human", "value": it.prompt}] for it, _ in ready]
            texts = generate_text(model, processor, convs, [ims for _, ims in ready], settings)
            cache.append([(it, text) for (it, _), text in zip(ready, texts)])
            answers.update({it.question_id: text for (it, _), text in zip(ready, texts)})
        if progress_bar is not None:
            progress_bar.update(len(batch))
    if len(skipped) > MAX_LOGGED_SKIPS:
        log.warning("... %d more items skipped for unreadable images", len(skipped) - MAX_LOGGED_SKIPS)
    return answers, skipped


def _load_items(config: EvalConfig, bench: Benchmark) -> tuple[list[EvalItem], int]:
    items = bench.load()
    n_available = len(items)
    if config.limit is not None:
        items = items[: config.limit]
    if config.max_new_tokens is not None:
        items = [dataclasses.replace(it, max_new_tokens=config.max_new_tokens) for it in items]
    if not items:
        raise ValueError(f"benchmark {bench.name} found no items in {config.data}")
    duplicates = [q for q, n in Counter(it.question_id for it in items).items() if n > 1]
    if duplicates:  # the cache and the scorers key answers by question id
        raise ValueError(f"benchmark {bench.name}: question ids occur more than once: {duplicates[:5]}")
    return items, n_available


def run_eval(config: EvalConfig, model=None, processor=None) -> EvalResult:
    """Evaluate, write predictions / metrics / markdown / submission files, and return the result.

    ``model``/``processor`` may be passed already loaded (they must be the checkpoint at ``config.model``,
    which still identifies the run in the cache and the reports). With ``config.answers`` no model is used.
    """
    config.validate()
    if config.answers is not None:
        return rescore(config)
    t0 = time.perf_counter()
    model_dir, _ = checks.checkpoint(config.model)  # manifest and parts checked before anything reads them
    checks.device(config.device)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config, protocol_notes = apply_protocol(config, device)
    output_dir = Path(config.output_dir) if config.output_dir else default_output_dir(config, model_dir)
    checks.output_dir(output_dir, "output dir")
    bench = _make_benchmark(config, output_dir)
    items, n_available = _load_items(config, bench)
    output_dir.mkdir(parents=True, exist_ok=True)  # only once the items are known to be there
    timing = {"load_items_s": time.perf_counter() - t0}

    with PredictionCache(output_dir / "cache.jsonl", _cache_header(config, bench, model_dir, device),
                         overwrite=config.overwrite) as cache:
        cached, stale = cache.lookup(items)
        pending = [it for it in items if it.question_id not in cached]
        if stale:
            log.info("%d cached answers belong to changed items and are recomputed", stale)
        answers, skipped, t_model, t_gen = {}, [], 0.0, 0.0
        if pending:
            if model is None:
                t1 = time.perf_counter()
                model, processor = serialization.load_model(model_dir, quantization=config.quantization,
                                                            dtype=config.dtype, device=device,
                                                            merge_on_load=config.merge_on_load)
                _hint_merge_on_load(model, config.batch_size)
                t_model = time.perf_counter() - t1
            bar = _progress(config.progress, len(items), len(cached), bench.display_name or bench.name)
            t2 = time.perf_counter()
            try:
                answers, skipped = generate_pending(model, processor, pending, cache, config.batch_size,
                                                    config.num_workers, bar)
            finally:
                if bar is not None:
                    bar.close()
            t_gen = time.perf_counter() - t2
    timing.update(load_model_s=t_model, generate_s=t_gen)

    predictions = {it.question_id: answers.get(it.question_id, cached.get(it.question_id)) for it in items}
    predictions = {q: a for q, a in predictions.items() if a is not None}
    notes = list(protocol_notes)
    if skipped:
        reasons = Counter(err.reason for _, err in skipped)
        by_reason = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
        notes.append(f"{len(skipped)} items skipped for unreadable images ({by_reason}); they have no prediction "
                     "and are scored as the benchmark scores a missing answer (see the other notes)")
    source = run_info(config, model_dir, device)
    return _finish(config, bench, items, predictions, output_dir, source, notes, t0, timing,
                   counts=dict(n_available=n_available, skipped=skipped, generated=len(answers), reused=len(cached),
                               stale=stale))


def rescore(config: EvalConfig) -> EvalResult:
    """Score an answers file (LLaVA's or ours) without a model: same metrics, tables and submission files."""
    t0 = time.perf_counter()
    answers = read_answers(config.answers)
    label = config.label or answers.model_id or Path(config.answers).stem
    output_dir = Path(config.output_dir) if config.output_dir else \
        Path("eval_results") / label / get_benchmark(config.benchmark).name
    bench = _make_benchmark(config, output_dir)
    items, n_available = _load_items(config, bench)
    predictions, report = match_answers(bench, items, answers)
    output_dir.mkdir(parents=True, exist_ok=True)
    source = {"label": label, "model": None, "answers_file": str(Path(config.answers).resolve()),
              "answers_format": answers.format, "model_id": answers.model_id, "answers_report": report.to_dict()}
    timing = {"load_items_s": time.perf_counter() - t0, "load_model_s": 0.0, "generate_s": 0.0}
    return _finish(config, bench, items, predictions, output_dir, source, report.notes(answers.path), t0, timing,
                   counts=dict(n_available=n_available, skipped=[], generated=0, reused=0, stale=0))


def run_info(config: EvalConfig, model_dir: Path, device: str) -> dict:
    """The ``run`` block of metrics.json for a model run (``source`` of ``_finish``)."""
    return {"label": config.label or model_dir.resolve().name, "model_dir": model_dir, "device": device}


def _finish(config: EvalConfig, bench: Benchmark, items: list[EvalItem], predictions: dict[str, str],
            output_dir: Path, source: dict, notes: list[str], t0: float, timing: dict, counts: dict) -> EvalResult:
    """Score, write submission files / predictions / metrics / markdown, print the summary."""
    t3 = time.perf_counter()
    score = bench.score(items, predictions)
    score.metrics["notes"] = notes + score.metrics.get("notes", [])
    submission = [str(p) for p in bench.write_submission(items, predictions, output_dir)]
    timing["score_s"] = time.perf_counter() - t3
    timing["total_s"] = time.perf_counter() - t0
    metrics = build_metrics(bench=bench, options=benchmark_options(bench), config=config, source=source,
                            score=score, n_items=len(items), timing=timing, submission=submission, **counts)
    files = write_outputs(output_dir, items, predictions, score, metrics, counts["skipped"])
    print_summary(metrics, files)
    return EvalResult(metrics, predictions, score, output_dir, files, counts["generated"])


def _progress(enabled: bool, total: int, done: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="item", dynamic_ncols=True)


__all__ = ["EvalConfig", "EvalResult", "ImageItemDataset", "PROTOCOLS", "apply_protocol", "benchmark_options",
           "budget_batches", "default_output_dir", "generate_pending", "rescore", "run_eval"]
