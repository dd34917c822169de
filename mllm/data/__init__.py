"""LLaVA-format data: records, dataset, labels, bad-data accounting, sampler, collator, ``validate``.

Exports are imported lazily, so ``mllm.templates.encode`` (which uses ``mllm.data.labels``) does not pull in
the dataset, sampler or image stack.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Collator": "mllm.data.collate",
    "LLaVADataset": "mllm.data.dataset",
    "RecordError": "mllm.data.records",
    "RecordStore": "mllm.data.records",
    "estimate_length": "mllm.data.records",
    "image_paths": "mllm.data.records",
    "REASONS": "mllm.data.report",
    "DataError": "mllm.data.report",
    "SkippedSample": "mllm.data.report",
    "SkipReport": "mllm.data.report",
    "ModalityLengthGroupedSampler": "mllm.data.sampler",
    "modality_length_grouped_indices": "mllm.data.sampler",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mllm.data' has no attribute {name!r}")
