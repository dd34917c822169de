"""What training does when numbers stop being finite.

A non-finite loss stops the run at once, naming the optimizer step and the samples (`NonFiniteLossError`).

A finite loss with a non-finite gradient norm (an overflow in backward: one bad sample, an fp16 corner) must
never reach the weights: clipping by an infinite norm turns every gradient into NaN, and AdamW would write
NaN weights into the next checkpoint. Policy: skip and count. The update is skipped (gradients dropped,
AdamW untouched; the step's samples count as seen and the learning-rate schedule advances, so the run stays
on its plan), a warning names the step and the sample ids, and the count goes into the checkpoints and the
summary. After `max_nonfinite_grad_steps` skipped updates in one run the next one stops the run, naming its
step and samples, because by then the cause is the run (learning rate, data), not one sample.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

from ..errors import UserError

logger = logging.getLogger(__name__)


class TrainingDivergedError(UserError):
    """Training produced NaN/inf; the message names the optimizer step and the samples involved."""


class NonFiniteGradError(TrainingDivergedError):
    """Too many optimizer steps with a non-finite gradient norm."""


class NonFiniteGradGuard:
    """Decides per optimizer step whether the update may be applied (see the module docstring)."""

    def __init__(self, limit: int, skipped: int = 0):
        self.limit, self.skipped = limit, skipped

    def allows_update(self, grad_norm: float | None, *, step: int, sample_ids: Callable[[], list]) -> bool:
        """`sample_ids` is called (a collective in multi-process runs) only when the norm is not finite."""
        if grad_norm is None or math.isfinite(grad_norm):
            return True
        ids = sample_ids()
        self.skipped += 1
        if self.skipped > self.limit:
            raise NonFiniteGradError(
                f"non-finite gradient norm ({grad_norm}) at optimizer step {step} on samples {ids}; "
                f"{self.skipped - 1} earlier update(s) of this run were skipped for the same reason and "
                f"--max_nonfinite_grad_steps is {self.limit}: lower the learning rate or inspect these samples")
        logger.warning("non-finite gradient norm (%s) at optimizer step %d on samples %s: update skipped "
                       "(%d of at most %d in this run)", grad_norm, step, ids, self.skipped, self.limit)
        return False
