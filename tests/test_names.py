"""One name per concept across the project: the image aspect ratio, the default tower preset, the eval suites.

Read from the source with `ast`, so a reintroduced second spelling fails here wherever it appears.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from vision_tower.config import DEFAULT_PRESET, IMAGE_ASPECT_RATIOS

ROOT = Path(__file__).resolve().parents[1]
CODE = [p for folder in ("mllm", "vision_tower", "projector", "demo", "scripts", "benchmarks")
        for p in sorted((ROOT / folder).rglob("*.py"))]
# the former spellings of "image_aspect_ratio" (one concept: how an image becomes the tower's square input)
OLD_NAMES = {"image_mode", "trained_image_mode", "IMAGE_MODES", "with_mode", "for_mode", "mode_changed"}


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def _names(tree: ast.AST):
    """Every identifier the code defines or uses: variables, attributes, arguments, keywords, functions."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.keyword) and node.arg:
            yield node.arg
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.split(".")[-1]


def _line_of(rel: str, text: str) -> int:
    return next(i for i, line in enumerate((ROOT / rel).read_text().splitlines(), 1) if line.startswith(text))


def test_the_default_preset_name_is_written_once():
    places = []
    for path in CODE:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        places += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and node.value == DEFAULT_PRESET and id(node) not in docstrings]
    assert places == ["vision_tower/config.py:" + str(_line_of("vision_tower/config.py", "DEFAULT_PRESET = "))]


def test_the_image_aspect_ratio_has_one_name_and_one_list_of_values():
    old, lists = [], []
    for path in CODE:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        old += [f"{path.relative_to(ROOT)}: {name}" for name in sorted(set(_names(tree)) & OLD_NAMES)]
        lists += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Tuple)
                  and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
                  and sorted(e.value for e in node.elts) == sorted(IMAGE_ASPECT_RATIOS)]
    assert not old, old
    assert lists == ["vision_tower/config.py:" + str(_line_of("vision_tower/config.py", "IMAGE_ASPECT_RATIOS = "))]


def test_chat_and_demo_take_the_new_flag_and_still_the_old_spellings():
    from demo.app import build_parser as demo_parser
    from mllm.chat.cli import build_parser as chat_parser

    for parser, old in ((chat_parser(), "--mode"), (demo_parser(), "--image-mode")):
        for flag in ("--image-aspect-ratio", old):
            assert parser.parse_args([flag, "resize"]).image_aspect_ratio == "resize"


def test_the_eval_suites_are_named_apart_from_the_speed_benchmarks():
    assert importlib.util.find_spec("mllm.eval.suites") is not None
    assert importlib.util.find_spec("mllm.eval.benchmarks") is None
    from mllm.eval.suites import BENCHMARK_NAMES

    assert {"vqav2", "gqa", "pope", "mme", "mmbench", "mmvet"} <= set(BENCHMARK_NAMES)
