"""Answer the pending question of a `ChatSession`: fit the context, stream, record how it ended.

One function for the terminal chat and the demo, so both trim history, stop, and report failures the
same way. Failures never escape: they become an error note in the session, with the real error text.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

from ..generation import GenerationSettings
from .session import ChatSession

logger = logging.getLogger(__name__)


def fit_context(chat_model, session: ChatSession, max_new_tokens: int) -> tuple[list[dict], list]:
    """The pending conversation, with the oldest exchanges dropped until prompt + answer fit the model's
    context (`model_max_length`). A single question that does not fit raises `ValueError`."""
    limit = chat_model.processor.model_max_length
    messages, images = session.conversation()
    if not limit:
        return messages, images
    while True:
        length = chat_model.prompt_length(messages)
        if length + max_new_tokens <= limit or not session.trim_oldest():
            break
        messages, images = session.conversation()
    if length > limit:
        raise ValueError(f"the question is too long: its prompt has {length} tokens and the model's context "
                         f"holds {limit}")
    return messages, images


def run_turn(chat_model, session: ChatSession, settings: GenerationSettings | None = None,
             image_mode: str | None = None) -> Iterator[str]:
    """Generate the answer to `session.pending`, yielding each new text piece as it arrives.

    The answer accumulates in the exchange; when the stream ends the exchange is completed (`stop`,
    `length`, `stopped`) or failed with the error's text. A stop requested before the start is honoured.
    """
    exchange = session.pending
    if exchange is None:
        return
    stop_event = session.stop_event
    try:
        settings = chat_model.settings(settings)
        if stop_event.is_set():
            session.complete(exchange, "stopped")
            return
        messages, images = fit_context(chat_model, session, settings.max_new_tokens)
        stream = chat_model.chat(messages, images, stream=True, settings=settings, image_mode=image_mode,
                                 stop_event=stop_event)
        for piece in stream:
            exchange.answer += piece
            yield piece
        session.complete(exchange, stream.finish_reason)
    except GeneratorExit:  # the consumer went away (closed page, cancelled event): stop and keep what we have
        stop_event.set()
        session.complete(exchange, "stopped")
        raise
    except KeyboardInterrupt:  # Ctrl-C in the terminal while waiting for a token: a stop, not a crash
        stop_event.set()
        session.complete(exchange, "stopped")
    except Exception as exc:
        logger.exception("generation failed")
        session.fail(exchange, f"Generation failed: {type(exc).__name__}: {exc}")
