"""Progress bar, periodic metrics (loss, lr, grad norm, tokens/s, skipped samples) and the end-of-run summary."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass
class StepStats:
    loss: float
    tokens: int  # non-padding tokens processed in the step, all ranks
    grad_norm: float | None


class ProgressLogger:
    """tqdm on the main process plus `accelerator.log` every `logging_steps` optimizer steps."""

    def __init__(self, accelerator, config, total_steps: int, initial: int = 0):
        from tqdm.auto import tqdm

        self.accelerator = accelerator
        self.every = max(1, int(config.logging_steps))
        self.report = bool(config.report_to)
        self.bar = tqdm(total=total_steps, initial=initial, desc=f"{config.stage}", dynamic_ncols=True,
                        disable=not accelerator.is_main_process)
        self._window_tokens, self._window_start = 0, time.time()
        self.last_loss: float | None = None

    def update(self, step: int, stats: StepStats, lr: float, skip_report) -> None:
        self.bar.update(1)
        self.last_loss = stats.loss
        self._window_tokens += stats.tokens
        if step % self.every and step != self.bar.total:
            return
        elapsed = max(time.time() - self._window_start, 1e-9)
        record = {
            "step": step,
            "loss": round(stats.loss, 6),
            "lr": lr,
            "grad_norm": None if stats.grad_norm is None else round(stats.grad_norm, 6),
            "tokens_per_s": round(self._window_tokens / elapsed, 1),
            "skipped": skip_report.total,
        }
        self._window_tokens, self._window_start = 0, time.time()
        self.bar.set_postfix(loss=f"{stats.loss:.4f}", lr=f"{lr:.2e}", tok_s=record["tokens_per_s"])
        if self.accelerator.is_main_process:
            logger.info("step %(step)d loss %(loss).4f lr %(lr).3e grad_norm %(grad_norm)s tokens/s %(tokens_per_s)s "
                        "skipped %(skipped)d", record)
        if self.report:
            self.accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)

    def summary(self, summary: dict, skip_summary: str) -> None:
        self.bar.close()
        lines = [
            f"[{summary['stage']}] done: {summary['steps']} optimizer steps ({summary['mode']}), "
            f"{summary['tokens_seen']} tokens in {summary['wall_time_s']:.1f} s on {summary['world_size']} process(es)",
            f"  final loss {summary['final_loss']}",
            f"  model: {summary['model_dir']}   last checkpoint: {summary['checkpoint']}",
            "  " + skip_summary.replace("\n", "\n  "),
        ]
        logger.info("\n".join(lines))
