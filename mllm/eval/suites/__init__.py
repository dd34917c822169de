"""The eval suites: benchmark names (as in LLaVA's ``scripts/v1_5/eval/<name>.sh``) to reader/scorer classes.

(Named apart from the repository's ``benchmarks/`` folder, which holds speed measurements.)"""
from __future__ import annotations

import dataclasses
import typing

from ..types import Benchmark
from .gqa import GQA
from .llava_bench import LLaVABench
from .mmbench import MMBench, MMBenchCN
from .mme import MME
from .mmvet import MMVet
from .pope import POPE
from .scienceqa import ScienceQA
from .seed import SEEDBench
from .textvqa import TextVQA
from .vizwiz import VizWiz
from .vqav2 import VQAv2

BENCHMARKS: dict[str, type[Benchmark]] = {cls.name: cls for cls in (
    VQAv2, GQA, VizWiz, TextVQA, POPE, MME, ScienceQA, MMBench, MMBenchCN, SEEDBench, LLaVABench, MMVet)}
BENCHMARK_NAMES: tuple[str, ...] = tuple(BENCHMARKS)


def get_benchmark(name: str) -> type[Benchmark]:
    """The benchmark class registered as ``name`` (case-insensitive, '-' = '_')."""
    key = name.lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}")
    return BENCHMARKS[key]


def load_benchmark(name: str, data, **options) -> Benchmark:
    """An instance of benchmark ``name`` reading ``data`` (a folder or file) with the given options."""
    cls = get_benchmark(name)
    valid = {f.name for f in dataclasses.fields(cls)} - {"data"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"benchmark {cls.name!r} has no option(s) {unknown}; options: {sorted(valid)}")
    return cls(data=str(data), **options)


def _coerce(value: str, annotation, default):
    text = value.strip()
    kind = type(default) if default is not None else None
    ann = str(annotation)
    if kind is bool or ann.startswith("bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if kind is int or ann.startswith("int"):
        return int(text)
    if kind is tuple or "tuple" in ann:
        return tuple(s.strip() for s in text.split(",") if s.strip())
    return None if text.lower() == "none" and default is None else text


def parse_options(name: str, pairs: typing.Iterable[str]) -> dict:
    """``["use_ocr=false", "splits=random,popular"]`` -> typed options of benchmark ``name`` (for CLIs)."""
    cls = get_benchmark(name)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("data", "judge")}
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"option {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in fields:
            raise ValueError(f"benchmark {cls.name!r} has no option {key!r}; options: {sorted(fields)}")
        f = fields[key]
        try:
            out[key] = _coerce(value, f.type, f.default)
        except ValueError as e:
            raise ValueError(f"option {key}: {e}") from e
    return out


__all__ = ["BENCHMARKS", "BENCHMARK_NAMES", "GQA", "LLaVABench", "MMBench", "MMBenchCN", "MME", "MMVet", "POPE",
           "SEEDBench", "ScienceQA", "TextVQA", "VQAv2", "VizWiz", "get_benchmark", "load_benchmark",
           "parse_options"]
