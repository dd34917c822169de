"""Answer the pending question of a `ChatSession`: fit the context, stream, record how it ended.

One function for the terminal chat and the demo, so both budget the answer, trim history, stop, and report
failures the same way (the budget and the trimming are `ChatModel.fit`'s, the Python API's own). Failures
never escape: they become an error note in the session, with the real error text.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

from ..generation import GenerationSettings
from .context import ContextFit, ContextOverflowError
from .session import ChatSession

logger = logging.getLogger(__name__)


def fit_context(chat_model, session: ChatSession, settings: GenerationSettings,
                image_aspect_ratio: str | None = None) -> ContextFit:
    """The pending conversation as it will be sent: `ChatModel.fit` decides the answer's budget and whether
    the oldest exchanges must go; the session records a trim (with a notice on the pending turn). A question
    that does not fit even alone raises `ContextOverflowError`."""
    messages, images = session.conversation(image_aspect_ratio or chat_model.image_aspect_ratio)
    fit = chat_model.fit(messages, images, settings)
    session.trim(fit.dropped, fit.context_length, fit.dropped_questions)
    return fit


def run_turn(chat_model, session: ChatSession, settings: GenerationSettings | None = None,
             image_aspect_ratio: str | None = None) -> Iterator[str]:
    """Generate the answer to `session.pending`, yielding each new text piece as it arrives.

    The answer accumulates in the exchange; when the stream ends the exchange is completed (`stop`,
    `length`, `stopped`) or failed with the error's text. A stop requested before the start is honoured.
    Notes about the turn (a trimmed history) are on the exchange before the first piece is yielded.
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
        image_aspect_ratio = image_aspect_ratio or chat_model.image_aspect_ratio
        fit = fit_context(chat_model, session, settings, image_aspect_ratio)
        _, images = session.conversation(image_aspect_ratio)
        stream = chat_model.chat(fit.turns, images, stream=True, settings=settings,
                                 image_aspect_ratio=image_aspect_ratio,
                                 stop_event=stop_event)
        for piece in stream:
            exchange.answer += piece
            yield piece
        session.complete(exchange, stream.finish_reason, window_full=fit.limited_by_context(settings.max_new_tokens))
    except GeneratorExit:  # the consumer went away (closed page, cancelled event): stop and keep what we have
        stop_event.set()
        session.complete(exchange, "stopped")
        raise
    except KeyboardInterrupt:  # Ctrl-C in the terminal while waiting for a token: a stop, not a crash
        stop_event.set()
        session.complete(exchange, "stopped")
    except ContextOverflowError as exc:
        session.fail(exchange, f"{str(exc)[0].upper()}{str(exc)[1:]}: ask something shorter.")
    except Exception as exc:
        logger.exception("generation failed")
        session.fail(exchange, f"Generation failed: {type(exc).__name__}: {exc}")
