"""Streaming generation that can be stopped: generation runs in a worker thread, text arrives as it decodes.

`TextStream` wraps `transformers.TextIteratorStreamer` (the decoding rules stay transformers' own). Two
things that streamer alone does not give:

- a stop that frees the CPU/GPU at once: the streamer's `put` (called by `generate` for every new token)
  raises `GenerationStopped` once the stop event is set, which ends `generate` within one step; a caller
  that abandons the iterator stops it too;
- no hang on failure: when `generate` raises, the worker ends the stream and the error is re-raised in the
  consuming thread, instead of leaving the consumer blocked on an empty queue.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from transformers import TextIteratorStreamer


class GenerationStopped(Exception):
    """Raised inside `generate` (through the streamer) to end a generation that was asked to stop."""


class _StoppableStreamer(TextIteratorStreamer):
    def __init__(self, tokenizer, stop_event: threading.Event):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop_event = stop_event
        self.num_tokens = 0
        self.last_token: int | None = None
        self.ended = False

    def put(self, value):
        if self.stop_event.is_set():
            raise GenerationStopped()
        is_prompt = self.skip_prompt and self.next_tokens_are_prompt
        super().put(value)
        if not is_prompt:
            flat = value.reshape(-1)
            self.num_tokens += int(flat.numel())
            if flat.numel():
                self.last_token = int(flat[-1])

    def end(self):
        if not self.ended:
            self.ended = True
            super().end()


class TextStream:
    """Iterate to receive text pieces as they are generated; `text` holds everything received so far.

    `finish_reason` is set once the stream is exhausted: "stop" (an end-of-turn token), "length" (hit
    `max_new_tokens`) or "stopped" (`stop()` or the stop event). Errors of the generation are raised by the
    iteration. Leaving the loop early (break, exception, garbage collection) stops the generation.
    """

    def __init__(self, run: Callable[[object], object], tokenizer, *, max_new_tokens: int, stop_token_ids=(),
                 stop_event: threading.Event | None = None):
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.text = ""
        self.finish_reason: str | None = None
        self.fit = None  # the `ContextFit` of the conversation, when `ChatModel.chat` made the stream
        self._max_new_tokens = max_new_tokens
        self._stop_ids = set(stop_token_ids)
        self._streamer = _StoppableStreamer(tokenizer, self.stop_event)
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._work, args=(run,), name="chat-generate", daemon=True)
        self._thread.start()

    def _work(self, run) -> None:
        try:
            run(self._streamer)
        except GenerationStopped:
            self._stopped = True
        except BaseException as exc:  # re-raised in the consumer
            self._error = exc
        finally:
            self._streamer.end()

    def stop(self) -> None:
        """Ask the generation to end after the current token (returns at once)."""
        self.stop_event.set()

    @property
    def num_tokens(self) -> int:
        return self._streamer.num_tokens

    def __iter__(self) -> Iterator[str]:
        exhausted = False
        try:
            for piece in self._streamer:
                if piece:
                    self.text += piece
                    yield piece
            exhausted = True
        finally:
            if not exhausted:
                self.stop_event.set()  # abandoned early: free the device
            self._thread.join()
        if self._error is not None:
            raise self._error
        self.finish_reason = self._finish_reason()

    def __del__(self):
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive():
            self.stop_event.set()

    def _finish_reason(self) -> str:
        if self._stopped:
            return "stopped"
        if self.num_tokens >= self._max_new_tokens and self._streamer.last_token not in self._stop_ids:
            return "length"
        return "stop"

    def until_done(self) -> str:
        """Consume the stream; return the whole text."""
        for _ in self:
            pass
        return self.text
