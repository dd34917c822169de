"""Known-harmless third-party warnings, silenced once for every command (`mllm.cli.main` installs this).

Each entry names exactly one message, so that anything new or actually wrong still shows.
"""
from __future__ import annotations

import logging
import warnings

# logger name -> message prefixes dropped from it
HARMLESS_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    # bitsandbytes >= 0.48 looks for an optional hub kernel package (`kernels`) for its CPU 4-bit matmul and
    # warns when it is absent; its built-in kernel is used instead (and we disable the repacked CPU path anyway).
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    # DeepSpeed (installed for the ZeRO configs) is imported by accelerate in every run; on a machine without a
    # GPU it warns that it chose its CPU accelerator, which is what a CPU run wants
    "DeepSpeed": ("Setting accelerator to CPU.",),
}
# (category, message regex) of Python warnings raised inside libraries, not by our code
HARMLESS_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # peft reads transformers' renamed gradient-checkpointing attribute; nothing for a user to change
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_known_warnings() -> None:
    """Install the filters (idempotent); call before the libraries are imported, as their warnings come at import."""
    for name, prefixes in HARMLESS_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
