"""The step loop's gradient bookkeeping in one process, against independent computations.

accelerate's gradient state decides when DDP reduces and when the DeepSpeed engine steps: it must say "sync" on
the last micro-batch of each accumulation window only. The loss reductions are checked against transformers' own
causal-LM loss: `per_device` is what HF Trainer computes (mean of per-micro-batch means), `token` one
token-weighted mean. A micro-batch whose samples were all skipped still goes through the model.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mllm.constants import IGNORE_INDEX
from mllm.data import SkipReport
from mllm.llm import base_causal_lm
from mllm.train.nonfinite import NonFiniteGradGuard
from mllm.train.trainer import _optimizer_step, _placeholder_batch


class _RecordGrads:
    """Stands in for the optimizer: keeps the gradients it would have applied."""

    def __init__(self, model):
        self.model, self.grads = model, None
        self.param_groups = [{"lr": 0.0}]

    def step(self):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def _batch(seed: int, rows: int, length: int, supervised_from: int) -> dict:
    """Right-padded text-only rows; row r is padded by r tokens; labels start at `supervised_from`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (rows, length), generator=gen)
    mask = torch.ones_like(ids)
    for r in range(rows):
        if r:
            mask[r, -r:] = 0
            ids[r, -r:] = 0
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :supervised_from] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _empty(length: int = 8) -> dict:
    ids = torch.zeros(0, length, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ids.clone(), "labels": ids.clone(), "skipped": []}


@pytest.fixture
def accelerator_for():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    def make(ga: int):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        return Accelerator(cpu=True, gradient_accumulation_steps=ga)

    yield make
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def full_model(make_tiny_model):
    model, processor = make_tiny_model(train_llm=True)
    model.train()
    return model, processor


def _run(accelerator, model, processor, window, reduction):
    optimizer = _RecordGrads(model)
    scheduler = SimpleNamespace(step=lambda: None)
    config = SimpleNamespace(loss_reduction=reduction, max_grad_norm=0.0)
    data = SimpleNamespace(skip_report=SkipReport())
    stats = _optimizer_step(accelerator, model, model, optimizer, scheduler, window, config, 0, data,
                            _placeholder_batch(processor.tokenizer), NonFiniteGradGuard(limit=0))
    return optimizer.grads, stats


def _hf_gradients(model, window, weights) -> dict:
    """Gradient of sum_i weights[i] * (transformers' mean causal-LM loss of micro-batch i)."""
    model.zero_grad(set_to_none=True)
    lm = base_causal_lm(model.llm)
    total = sum(w * lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
                for w, b in zip(weights, window))
    total.backward()
    grads = {f"llm.{n}": p.grad.detach().clone() for n, p in lm.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _assert_grads_match(ours, expected):
    assert expected and set(expected) <= set(ours)
    for name, grad in expected.items():  # float32 summation-order noise only: 1e-5 of the largest entry
        torch.testing.assert_close(ours[name], grad, rtol=0, atol=1e-5 * float(grad.abs().max()) + 1e-12, msg=name)


def test_gradient_sync_only_on_each_windows_last_micro_batch(accelerator_for, full_model):
    """What the DeepSpeed engine reads to decide engine.step(): once per window, also for a short last window."""
    model, processor = full_model
    accelerator = accelerator_for(ga=3)
    seen = []
    backward = accelerator.backward
    accelerator.backward = lambda loss, **kw: (seen.append(accelerator.sync_gradients), backward(loss, **kw))[1]
    _run(accelerator, model, processor, [_batch(i, 2, 12, 4) for i in range(3)], "token")
    assert seen == [False, False, True]
    seen.clear()
    _run(accelerator, model, processor, [_batch(i, 2, 12, 4) for i in range(2)], "token")  # an epoch's short tail
    assert seen == [False, True]


@pytest.mark.parametrize("reduction", ["per_device", "token"])
def test_loss_reduction_equals_independent_computation(accelerator_for, full_model, reduction):
    model, processor = full_model
    window = [_batch(0, 2, 16, 3), _batch(1, 3, 10, 7), _batch(2, 1, 12, 2)]  # very different label counts
    counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window]
    assert len(set(counts)) == 3
    per_device = [1 / len(window)] * len(window)  # HF Trainer: loss / gradient_accumulation_steps per micro-batch
    token = [n / sum(counts) for n in counts]
    grads, stats = _run(accelerator_for(ga=3), model, processor, window, reduction)
    _assert_grads_match(grads, _hf_gradients(model, window, per_device if reduction == "per_device" else token))
    other = _hf_gradients(model, window, token if reduction == "per_device" else per_device)
    name = next(iter(other))
    assert not torch.allclose(grads[name], other[name], rtol=1e-3), "the two reductions must differ here"
    with torch.no_grad():
        lm = base_causal_lm(model.llm)
        losses = [lm(**{k: b[k] for k in ("input_ids", "attention_mask", "labels")}).loss.item() for b in window]
    expected_loss = sum(w * v for w, v in zip(per_device if reduction == "per_device" else token, losses))
    assert stats.loss == pytest.approx(expected_loss, rel=1e-5)


def test_micro_batch_with_every_sample_skipped_still_runs_the_model(accelerator_for, full_model):
    """Its rank must make the same forward/backward collectives: the placeholder goes through the model with
    zero weight, and the gradient is the token mean over the remaining micro-batches."""
    model, processor = full_model
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(1))
    window = [_batch(0, 2, 12, 3), _empty(), _batch(2, 2, 12, 5)]
    grads, _ = _run(accelerator_for(ga=3), model, processor, window, "token")
    handle.remove()
    assert len(calls) == 3
    kept = [window[0], window[2]]
    counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in kept]
    _assert_grads_match(grads, _hf_gradients(model, kept, [n / sum(counts) for n in counts]))
