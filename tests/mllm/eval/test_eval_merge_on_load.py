"""`eval --merge-on-load` reaches the loader and keeps its predictions apart from the 4-bit ones in the cache."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from mllm.eval.cache import CacheMismatchError
from mllm.eval.runner import EvalConfig, _hint_merge_on_load, run_eval


def test_merge_on_load_reaches_load_model_and_the_cache_header(synthetic_bench, tiny_checkpoint, tmp_path,
                                                                monkeypatch):
    import mllm.serialization as serialization

    real_load, seen = serialization.load_model, []

    def spy(directory, **kwargs):
        seen.append(kwargs)
        return real_load(directory, **kwargs)

    monkeypatch.setattr(serialization, "load_model", spy)
    pope = synthetic_bench["pope"]

    def config(merge: bool) -> EvalConfig:
        return EvalConfig(benchmark=pope.name, data=str(pope.data), model=str(tiny_checkpoint),
                          options=dict(pope.options), output_dir=str(tmp_path), limit=2, max_new_tokens=2,
                          num_workers=0, progress=False, device="cpu", merge_on_load=merge)

    run_eval(config(True))
    assert seen[0]["merge_on_load"] is True
    with pytest.raises(CacheMismatchError):  # answers of the merged model are not reused for the 4-bit one
        run_eval(config(False))


def test_batched_4bit_decoding_on_cuda_points_at_merge_on_load(caplog):
    from importlib.metadata import version

    from packaging.version import Version

    fused = 1 if Version(version("bitsandbytes")) < Version("0.50") else 4
    four_bit = SimpleNamespace(device=torch.device("cuda"), llm=SimpleNamespace(is_loaded_in_4bit=True))
    def hints():
        return [r.getMessage() for r in caplog.records if r.name == "mllm.eval.runner"]

    with caplog.at_level(logging.WARNING, logger="mllm.eval.runner"):
        _hint_merge_on_load(four_bit, fused)  # within the fused kernels' rows: nothing to say
        _hint_merge_on_load(SimpleNamespace(device=torch.device("cpu"), llm=four_bit.llm), 8)
        _hint_merge_on_load(SimpleNamespace(device=torch.device("cuda"), llm=SimpleNamespace()), 8)
        assert hints() == []
        _hint_merge_on_load(four_bit, 8)
    assert len(hints()) == 1 and "--merge-on-load" in hints()[0]
