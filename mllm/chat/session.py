"""The state of one chat: an image, the exchanges about it, notices for the reader, and stop control.

Pure Python (no torch, no gradio), shared by the terminal chat and the demo, so the rules are tested once:

- One image per conversation, as in LLaVA-1.5 training: the image marker opens the first user turn of the
  model's context. A new image (or removing it) starts a new context; the transcript keeps the old turns.
- The transcript (what the reader sees) and the context (what the model sees) differ in three ways: notices
  and errors are never sent to the model, exchanges that failed or produced nothing are left out (the
  template refuses empty turns), and when the prompt outgrows the context window the oldest exchanges are
  dropped from the context (`trim_oldest`) with a notice.
- Exactly one answer is generated at a time; `request_stop` works before the generation starts too (the
  demo queues generations), because every submission gets a fresh stop event.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..constants import IMAGE_TOKEN

FINISH_REASONS = ("stop", "length", "stopped", "error")
STATUS_ICON = {"notice": "ℹ️", "error": "⚠️"}


class ChatStateError(ValueError):
    """An action that the current state does not allow (asking while an answer is generated, ...)."""


@dataclass
class Exchange:
    """One question and its answer; `answer` grows while streaming, `finish` is set when it is done."""

    question: str
    answer: str = ""
    finish: str | None = None  # None while pending; one of FINISH_REASONS afterwards
    context: int = 0  # which context (image) it belongs to

    @property
    def pending(self) -> bool:
        return self.finish is None

    @property
    def usable(self) -> bool:
        """Sent to the model as history: finished without error and with a non-empty answer."""
        return self.finish in ("stop", "length", "stopped") and bool(self.answer.strip())


@dataclass
class Note:
    """A line for the reader only: `kind` is "notice" or "error"."""

    kind: str
    text: str


@dataclass
class ImageRef:
    """The image of a context: the decoded picture plus what identifies it to the reader and to us."""

    image: object  # PIL.Image.Image
    name: str
    key: str  # content hash: the same upload twice is the same image
    display: str | None = None  # a file path the transcript may show (the demo's uploaded copy)

    @property
    def size_text(self) -> str:
        width, height = self.image.size
        return f"{width}×{height}"


@dataclass
class ChatSession:
    """One conversation about (at most) one image at a time. See the module docstring for the rules."""

    system: str | None = None
    image: ImageRef | None = None
    items: list = field(default_factory=list)  # Exchange | Note | ImageRef (where an image was set), in display order
    context: int = 0  # id of the current context; bumped by a new image or a reset
    context_start: int = 0  # first exchange of the current context still sent to the model (after trimming)
    stop_event: threading.Event = field(default_factory=threading.Event)
    finished: int = 0  # answers finished (any way) since the session began: a progress counter for UIs

    # ------------------------------------------------------------------ queries
    @property
    def exchanges(self) -> list[Exchange]:
        return [item for item in self.items if isinstance(item, Exchange)]

    def context_exchanges(self) -> list[Exchange]:
        """Exchanges of the current context that the model still sees (after trimming)."""
        current = [ex for ex in self.exchanges if ex.context == self.context]
        return current[self.context_start:]

    @property
    def pending(self) -> Exchange | None:
        last = self.exchanges[-1] if self.exchanges else None
        return last if last is not None and last.pending else None

    @property
    def busy(self) -> bool:
        return self.pending is not None

    def conversation(self) -> tuple[list[dict], list]:
        """(LLaVA-JSON messages, images) for the pending question: usable history, then the open question."""
        pending = self.pending
        if pending is None:
            raise ChatStateError("no question is waiting for an answer")
        history = [ex for ex in self.context_exchanges() if ex is not pending and ex.usable]
        messages = [{"from": "system", "value": self.system}] if self.system else []
        for ex in history:
            messages += [{"from": "human", "value": ex.question}, {"from": "gpt", "value": ex.answer.strip()}]
        messages.append({"from": "human", "value": pending.question})
        images = []
        if self.image is not None:
            first = 1 if self.system else 0
            messages[first] = {"from": "human", "value": f"{IMAGE_TOKEN}\n{messages[first]['value']}"}
            images.append(self.image.image)
        return messages, images

    # ------------------------------------------------------------------ notes
    def notice(self, text: str) -> None:
        self.items.append(Note("notice", text))

    def error(self, text: str) -> None:
        self.items.append(Note("error", text))

    # ------------------------------------------------------------------ image
    def set_image(self, image, name: str, key: str, display: str | None = None) -> bool:
        """Use `image` from now on (None removes it). Returns True when it differs from the current one.

        A different image starts a new context, since the model saw one image per conversation in training.
        `display` is a file path the transcript shows the image from (None: text notices only).
        """
        self._require_idle("change the image")
        current = self.image.key if self.image is not None else None
        if (image is None and current is None) or (image is not None and key == current):
            return False
        had_turns = bool(self.context_exchanges())
        self.image = ImageRef(image, name, key, display) if image is not None else None
        self._new_context()
        if self.image is not None:
            self.items.append(self.image)
        if image is None:
            self.notice("Image removed: the next question starts a text-only conversation.")
        elif had_turns:
            self.notice(f"New image {name} ({self.image.size_text}): the conversation starts again, "
                        "because the model was trained with one image per conversation.")
        else:
            self.notice(f"Image {name} ({self.image.size_text}) loaded.")
        return True

    # ------------------------------------------------------------------ turns
    def ask(self, question: str) -> Exchange:
        """Add a question; the caller then generates its answer. Refused while another answer is pending."""
        self._require_idle("ask")
        if IMAGE_TOKEN in question:
            question = question.replace(IMAGE_TOKEN, "").strip()  # images come from `set_image`, not from text
        question = question.strip()
        if not question:
            raise ChatStateError("the question is empty")
        exchange = Exchange(question, context=self.context)
        self.items.append(exchange)
        self.stop_event = threading.Event()
        return exchange

    def regenerate(self) -> Exchange:
        """Discard the last answer of the current context and ask its question again."""
        self._require_idle("regenerate")
        positions = [i for i, item in enumerate(self.items) if isinstance(item, Exchange)]
        if not positions or self.items[positions[-1]].context != self.context:
            raise ChatStateError("there is no answer to regenerate in this conversation")
        last = self.items[positions[-1]]
        del self.items[positions[-1] + 1:]  # notes about the discarded answer (stopped, cut off, errors)
        last.answer, last.finish = "", None
        self.stop_event = threading.Event()
        return last

    def complete(self, exchange: Exchange, finish: str) -> None:
        """Mark `exchange` finished (`stop`, `length` or `stopped`), with a notice when the reader should know."""
        if finish not in FINISH_REASONS:
            raise ValueError(f"finish must be one of {FINISH_REASONS}, got {finish!r}")
        if not self._holds(exchange):  # reset while it was generated: nothing to record
            return
        exchange.answer = exchange.answer.strip()
        exchange.finish = finish
        self.finished += 1
        if finish == "stopped":
            self.notice("Stopped." if exchange.answer.strip() else "Stopped before any text was generated.")
        elif finish == "length":
            self.notice("The answer reached the max-new-tokens limit and was cut off.")
        elif not exchange.answer.strip():
            self.notice("The model returned an empty answer.")

    def fail(self, exchange: Exchange, message: str) -> None:
        """Finish `exchange` with an error the reader sees; it is not sent to the model as history."""
        if not self._holds(exchange):
            return
        exchange.finish = "error"
        self.finished += 1
        self.error(message)

    def trim_oldest(self) -> bool:
        """Drop the oldest usable exchange of the context from what the model sees; False if none is left."""
        history = [ex for ex in self.context_exchanges() if not ex.pending]
        if not history:
            return False
        self.context_start += 1
        self.notice("The conversation outgrew the model's context window: the oldest turn is no longer sent "
                    "to the model.")
        return True

    def request_stop(self) -> bool:
        """Ask the running (or queued) generation to stop; True if there was one."""
        if self.pending is None:
            return False
        self.stop_event.set()
        return True

    def reset(self, keep_image: bool = True) -> None:
        """Forget the conversation (and, unless `keep_image`, the image). A running generation is stopped.

        A kept image stays in the (otherwise empty) transcript, so the reader sees what the model still sees.
        """
        self.stop_event.set()
        for ex in self.exchanges:
            if ex.pending:
                ex.finish = "stopped"
        self.items = []
        if not keep_image:
            self.image = None
        elif self.image is not None:
            self.items.append(self.image)
        self._new_context()

    # ------------------------------------------------------------------ display
    def transcript(self) -> list[dict]:
        """Chat messages for display: role + content, a text or, for an image, {"path", "alt_text"}."""
        out: list[dict] = []
        for item in self.items:
            if isinstance(item, ImageRef):
                if item.display:
                    out.append({"role": "user", "content": {"path": item.display, "alt_text": item.name}})
                continue
            if isinstance(item, Note):
                out.append({"role": "assistant", "content": f"{STATUS_ICON[item.kind]} {item.text}"})
                continue
            out.append({"role": "user", "content": item.question})
            if item.answer.strip():
                out.append({"role": "assistant", "content": item.answer})
        return out

    # ------------------------------------------------------------------ internals
    def _holds(self, exchange: Exchange) -> bool:
        return any(item is exchange for item in self.items)

    def _require_idle(self, action: str) -> None:
        if self.busy:
            raise ChatStateError(f"cannot {action} while an answer is being generated: wait for it or stop it")

    def _new_context(self) -> None:
        self.context += 1
        self.context_start = 0
