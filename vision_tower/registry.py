"""The tower registry: architecture name → the `VisionTower` subclass that implements it.

Adding an architecture is one module (the class with its presets, checkpoint layouts, structure inference and
prefix-token count) plus one line in `TOWERS`. Modules are imported on first use, so naming an architecture
costs nothing until a tower of it is built or a checkpoint is inspected.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

# arch -> "module:Class". Order matters only when two towers' checkpoint layouts match the same keys: the
# earlier tower's layout wins (see vision_tower.checkpoint.detect_layout).
TOWERS: dict[str, str] = {
    "eva02": "vision_tower.eva:EvaVisionTower",
    "clip": "vision_tower.clip:ClipVisionTower",
    "siglip": "vision_tower.siglip:SiglipVisionTower",
}
ARCHS = tuple(TOWERS)


class UnknownTowerError(ValueError):
    """An architecture name no registered tower implements."""


def tower_class(arch: str):
    """The `VisionTower` subclass registered for `arch`."""
    target = TOWERS.get(arch)
    if target is None:
        raise UnknownTowerError(f"unknown tower arch {arch!r}; registered: {', '.join(TOWERS)}")
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def tower_classes() -> list:
    """Every registered tower class, in registry order."""
    return [tower_class(arch) for arch in TOWERS]


class _Presets(Mapping):
    """Every registered tower's presets by name, collected on first access (importing the tower modules)."""

    def __init__(self) -> None:
        self._by_name: dict | None = None

    def _load(self) -> dict:
        if self._by_name is None:
            by_name = {}
            for cls in tower_classes():
                for preset in cls.presets:
                    if preset.name in by_name:
                        raise RuntimeError(f"tower preset {preset.name!r} is defined twice")
                    by_name[preset.name] = preset
            self._by_name = by_name
        return self._by_name

    def __getitem__(self, name: str):
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return f"PRESETS({', '.join(self)})"


PRESETS: Mapping = _Presets()
