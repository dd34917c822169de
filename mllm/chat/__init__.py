"""Chat with a checkpoint: a Python API (`load`, `ChatModel.chat`), the chat state shared by the terminal
chat and the demo (`ChatSession`), and the `llm2clip-llava chat` command (`mllm.chat.cli`).

Exports are imported lazily, so the pure chat-state code does not import torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load": "mllm.chat.api",
    "ChatModel": "mllm.chat.api",
    "IMAGE_MODES": "mllm.chat.api",
    "TextStream": "mllm.chat.streaming",
    "GenerationStopped": "mllm.chat.streaming",
    "ChatSession": "mllm.chat.session",
    "ChatStateError": "mllm.chat.session",
    "Exchange": "mllm.chat.session",
    "run_turn": "mllm.chat.turn",
    "fit_context": "mllm.chat.turn",
    "open_image": "mllm.chat.images",
    "explain": "mllm.chat.images",
    "GenerationSettings": "mllm.generation",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mllm.chat' has no attribute {name!r}")
