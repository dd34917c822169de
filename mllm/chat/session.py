"""The state of one chat: an image, the exchanges about it, notices for the reader, and stop control.

Pure Python (no torch, no gradio), shared by the terminal chat and the demo, so the rules are tested once:

- One image per conversation, as in LLaVA-1.5 training: the image marker opens the first user turn of the
  model's context. A new image (or removing it) starts a new context; the transcript keeps the old turns.
- The transcript (what the reader sees) and the context (what the model sees) differ in three ways: notices
  and errors are never sent to the model, exchanges that failed or produced nothing are left out (the
  template refuses empty turns), and when the prompt outgrows the context window the oldest exchanges are
  dropped from the context (`trim`, decided by `mllm.chat.context`) with a notice on the turn it concerns.
- Exactly one answer is generated at a time; `request_stop` works before the generation starts too (the
  demo queues generations), because every submission gets a fresh stop event.
"""
from __future__ import annotations

import threading
import uuid
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
    notes: list = field(default_factory=list)  # Notes about how this turn was answered, shown before the answer

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

    image: object  # PIL.Image.Image (None when `views` stand in for it, or once another image replaced it)
    name: str
    key: str  # content hash: the same upload twice is the same image
    display: str | None = None  # a file path the transcript may show (the demo's copy of an upload)
    source: str | None = None  # the file it was read from, when it is the user's own (the terminal's path)
    views: dict | None = None  # {image_aspect_ratio: the image as the tower receives it}, kept instead of a
    size: tuple[int, int] | None = None  # large original (the demo); `size` is the original's

    def __post_init__(self):
        if self.size is None:
            self.size = tuple(self.image.size)

    def view_for(self, image_aspect_ratio: str | None = None):
        """What the model is given for that preprocessing: its prepared view when there are views."""
        if self.views:
            if image_aspect_ratio not in self.views:
                raise ValueError(f"no view of {self.name} for preprocessing {image_aspect_ratio!r}; "
                                 f"have {sorted(self.views)}")
            return self.views[image_aspect_ratio]
        return self.image

    @property
    def size_text(self) -> str:
        width, height = self.size
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
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # names saved conversations and per-session files

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

    def conversation(self, image_aspect_ratio: str | None = None) -> tuple[list[dict], list]:
        """(LLaVA-JSON messages, images) for the pending question: usable history, then the open question.
        `image_aspect_ratio` picks the image's prepared view when it has views (see `ImageRef`)."""
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
            images.append(self.image.view_for(image_aspect_ratio))
        return messages, images

    # ------------------------------------------------------------------ notes
    def notice(self, text: str) -> None:
        self.items.append(Note("notice", text))

    def error(self, text: str) -> None:
        self.items.append(Note("error", text))

    # ------------------------------------------------------------------ image
    def set_image(self, image, name: str, key: str, display: str | None = None, source: str | None = None) -> bool:
        """Use `image` from now on (None removes it). Returns True when it differs from the current one.

        A different image starts a new context, since the model saw one image per conversation in training.
        `display` is a file path the transcript shows the image from (None: text notices only); `source` the
        user's own file it came from (saved conversations refer to it).
        """
        return self.use_image(ImageRef(image, name, key, display, source) if image is not None else None)

    def use_image(self, ref: ImageRef | None) -> bool:
        """`set_image` with a ready `ImageRef` (None removes the image); True when it differs from the current one."""
        self._require_idle("change the image")
        current = self.image.key if self.image is not None else None
        if (ref is None and current is None) or (ref is not None and ref.key == current):
            return False
        had_turns = bool(self.context_exchanges())
        self._let_go_of_image()
        self.image = ref
        name = ref.name if ref is not None else ""
        self._new_context()
        if self.image is not None:
            self.items.append(self.image)
        if ref is None:
            self.notice("Image removed: the next question starts a text-only conversation.")
        elif had_turns:
            self.notice(f"New image {name} ({self.image.size_text}): the conversation starts again, "
                        "because the model was trained with one image per conversation.")
        else:
            self.notice(f"Image {name} ({self.image.size_text}) loaded.")
        return True

    def restore(self, exchanges: list[tuple[str, str]], image: ImageRef | None, system: str | None,
                label: str) -> None:
        """Continue a saved conversation: a new context with `image` and the answered `exchanges` as history
        (the old transcript stays above it). `system` replaces the system prompt when given."""
        self._require_idle("load a conversation")
        self._new_context()
        self._let_go_of_image()
        self.image = image
        if system is not None:
            self.system = system
        if image is not None:
            self.items.append(image)
        for question, answer in exchanges:
            self.items.append(Exchange(question, answer, "stop", self.context))
        about = f" about {image.name} ({image.size_text})" if image is not None else ""
        self.notice(f"Loaded {label}: {len(exchanges)} turn{'s' if len(exchanges) != 1 else ''}{about}. "
                    "Ask a follow-up question.")

    def close(self) -> None:
        """Let go of everything heavy (an expired demo session): stop a generation, drop the image."""
        self.stop_event.set()
        self._let_go_of_image()
        self.image = None
        self.items = []

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
        last.answer, last.finish, last.notes = "", None, []
        self.stop_event = threading.Event()
        return last

    def complete(self, exchange: Exchange, finish: str, window_full: bool = False) -> None:
        """Mark `exchange` finished (`stop`, `length` or `stopped`), with a notice when the reader should know.
        `window_full`: the answer's budget was the room left in the context window, not max-new-tokens."""
        if finish not in FINISH_REASONS:
            raise ValueError(f"finish must be one of {FINISH_REASONS}, got {finish!r}")
        if not self._holds(exchange):  # reset while it was generated: nothing to record
            return
        exchange.answer = exchange.answer.strip()
        exchange.finish = finish
        self.finished += 1
        if finish == "stopped":
            self.notice("Stopped." if exchange.answer.strip() else "Stopped before any text was generated.")
        elif finish == "length" and window_full:
            self.notice("The answer filled the model's context window and was cut off: /reset (Clear) starts "
                        "a conversation with room again.")
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

    def trim(self, count: int, context_length: int | None = None, questions=()) -> None:
        """Stop sending the `count` oldest usable exchanges (the history `conversation` sends) to the model,
        with a notice on the pending exchange; the image stays (it moves to the first kept turn)."""
        pending = self.pending
        if count < 1 or pending is None:
            return
        context = self.context_exchanges()
        usable = [i for i, ex in enumerate(context) if ex is not pending and ex.usable]
        if count > len(usable):
            raise ValueError(f"cannot trim {count} exchanges: the history holds {len(usable)}")
        self.context_start += usable[count - 1] + 1
        window = f" ({context_length} tokens)" if context_length else ""
        turns = "the oldest turn" if count == 1 else f"the {count} oldest turns"
        named = "; ".join(f'"{_shorten(q)}"' for q in questions)
        image = ", the image still is" if self.image is not None else ""
        pending.notes.append(Note("notice", f"The conversation outgrew the model's context window{window}: "
                                            f"{turns}{f' ({named})' if named else ''} "
                                            f"{'is' if count == 1 else 'are'} no longer sent to the model{image}."))

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
            self._let_go_of_image()
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
            out += [{"role": "assistant", "content": f"{STATUS_ICON[n.kind]} {n.text}"} for n in item.notes]
            if item.answer.strip():
                out.append({"role": "assistant", "content": item.answer})
        return out

    # ------------------------------------------------------------------ internals
    def _holds(self, exchange: Exchange) -> bool:
        return any(item is exchange for item in self.items)

    def _require_idle(self, action: str) -> None:
        if self.busy:
            raise ChatStateError(f"cannot {action} while an answer is being generated: wait for it or stop it")

    def _let_go_of_image(self) -> None:
        """The transcript keeps showing a replaced image (from its display file); its pixels can go."""
        if self.image is not None:
            self.image.image = self.image.views = None

    def _new_context(self) -> None:
        self.context += 1
        self.context_start = 0


def _shorten(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
