"""Chat with a checkpoint: a Python API (`load`, `ChatModel.chat`), the context budget all of them share
(`mllm.chat.context`), the chat state shared by the terminal chat and the demo (`ChatSession`), saved
conversations (`mllm.chat.conversation_file`), and the `llm2clip-llava chat` command (`mllm.chat.cli`; the flags
and checks it shares with the demo are in `mllm.chat.command`, so the Python API neither prints nor exits).

Exports are imported lazily, so the pure chat-state code does not import torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load": "mllm.chat.api",
    "ChatModel": "mllm.chat.api",
    "IMAGE_ASPECT_RATIOS": "mllm.chat.api",
    "TextStream": "mllm.chat.streaming",
    "GenerationStopped": "mllm.chat.streaming",
    "ChatSession": "mllm.chat.session",
    "ChatStateError": "mllm.chat.session",
    "Exchange": "mllm.chat.session",
    "run_turn": "mllm.chat.turn",
    "fit_context": "mllm.chat.turn",
    "ContextFit": "mllm.chat.context",
    "ContextOverflowError": "mllm.chat.context",
    "fit_conversation": "mllm.chat.context",
    "save_conversation": "mllm.chat.conversation_file",
    "read_conversation": "mllm.chat.conversation_file",
    "open_image": "mllm.chat.images",
    "explain": "mllm.chat.images",
    "GenerationSettings": "mllm.generation",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mllm.chat' has no attribute {name!r}")
