"""What each control of the demo does, as plain functions of the chat state (no gradio objects here).

Every handler takes and returns the `ChatSession` (kept per browser tab in a `gr.State`) and returns the
transcript to show. Nothing a person does can raise out of a handler: bad uploads, actions at the wrong
moment and generation failures all become a message in the chat, and the server carries on.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from mllm.chat.images import ImageLoadError, explain, open_image
from mllm.chat.session import ChatSession, ChatStateError
from mllm.chat.turn import run_turn
from mllm.generation import GenerationSettings

logger = logging.getLogger(__name__)
VIEW_SIZE = 224


def upload_path(payload) -> tuple[str | None, str | None]:
    """(server path, the uploader's file name) of an image component's raw value (dict or FileData)."""
    if payload is None:
        return None, None
    if isinstance(payload, (str, Path)):
        return str(payload), Path(payload).name
    get = payload.get if isinstance(payload, dict) else lambda key, default=None: getattr(payload, key, default)
    path = get("path")
    name = get("orig_name") or (Path(path).name if path else None)
    return path, name


def message_parts(message) -> tuple[str, list]:
    """(text, attached files) of a multimodal message box's raw value."""
    if message is None:
        return "", []
    if isinstance(message, str):
        return message, []
    get = message.get if isinstance(message, dict) else lambda key, default=None: getattr(message, key, default)
    return get("text") or "", list(get("files") or [])


def chat_messages(session: ChatSession | None) -> list[dict]:
    """The transcript in gradio's messages format; text is passed as a text part (gradio dedents plain
    strings, which would alter answers), images as file parts."""
    if session is None:
        return []
    out = []
    for message in session.transcript():
        content = message["content"]
        part = content if isinstance(content, dict) else {"type": "text", "text": content}
        out.append({"role": message["role"], "content": [part]})
    return out


def status_html(session: ChatSession | None) -> str:
    """One line under the chat: ready / waiting for the model / generating. `data-state` and `data-finished`
    (answers finished so far) let scripts and tests wait for an answer to be complete."""
    pending = session.pending if session is not None else None
    if pending is None:
        state, text = "idle", "Ready."
    elif not pending.answer:
        state, text = "waiting", "Waiting for the model…"
    else:
        state, text = "generating", "Generating… (Stop ends it)"
    finished = session.finished if session is not None else 0
    return f"<div class='chat-status' data-state='{state}' data-finished='{finished}'>{text}</div>"


class DemoBackend:
    """The model plus the rules of the page; one instance serves every browser tab."""

    def __init__(self, bot, settings: GenerationSettings, min_update_interval: float = 0.08):
        self.bot = bot
        self.settings = settings
        # Each update re-sends and re-renders the chat; ~12 updates/s looks live and keeps a busy browser (and
        # its Stop button) responsive during long answers.
        self.min_update_interval = min_update_interval

    # ------------------------------------------------------------------ helpers
    def new_session(self) -> ChatSession:
        return ChatSession()

    def model_view(self, session: ChatSession | None, mode: str | None):
        """The image as the model receives it: the mode's geometry at the tower's resolution, enlarged by
        whole pixels (nearest neighbour) to at least `VIEW_SIZE` so small tower inputs stay visible."""
        if session is None or session.image is None:
            return None
        view = self.bot.processor_for(mode).image_processor.prepare_image(session.image.image)
        factor = max(1, -(-VIEW_SIZE // view.width))
        return view.resize((view.width * factor, view.height * factor), Image.Resampling.NEAREST)

    def _use_upload(self, session: ChatSession, payload) -> bool:
        """Make the session use an uploaded file; False (with the reason in the chat) if it cannot."""
        path, name = upload_path(payload)
        try:
            image, key = open_image(path)
            session.set_image(image, name, key, display=path)
        except ImageLoadError as exc:
            session.error(explain(exc, name))
            return False
        except ChatStateError as exc:
            session.error(str(exc))
            return False
        except Exception as exc:  # an unexpected failure still leaves the page usable
            logger.exception("could not use the uploaded file %s", name)
            session.error(f"Could not use {name}: {type(exc).__name__}: {exc}")
            return False
        return True

    # ------------------------------------------------------------------ events
    def submit(self, message, mode, session):
        """The message box was sent: text and/or an attached image. Returns (chat, box, model view, session).

        A bad attachment is reported in the chat and the question is kept in the box, unsent.
        """
        chat, box, view, session = self._submit(message, mode, session)
        return chat, box, view, session, status_html(session)

    def _submit(self, message, mode, session):
        session = session or self.new_session()
        text, files = message_parts(message)
        if not text.strip() and not files:
            return chat_messages(session), message, self.model_view(session, mode), session
        if session.busy:
            session.error("An answer is still being generated: wait for it, or press Stop.")
            return chat_messages(session), message, self.model_view(session, mode), session
        for payload in files[-1:]:  # one image per conversation: the last attachment wins
            if not self._use_upload(session, payload):
                if text.strip():
                    session.notice("Your question was not sent: attach another image, or send it without one.")
                return chat_messages(session), {"text": text, "files": []}, self.model_view(session, mode), session
        if text.strip():
            try:
                session.ask(text)
            except ChatStateError as exc:
                session.error(str(exc))
                return chat_messages(session), message, self.model_view(session, mode), session
        return chat_messages(session), {"text": "", "files": []}, self.model_view(session, mode), session

    def remove_image(self, mode, session):
        if session is not None and session.image is not None:
            try:
                session.set_image(None, "", "")
            except ChatStateError as exc:
                session.error(str(exc))
        return chat_messages(session), self.model_view(session, mode), session

    def mode_changed(self, mode, session):
        if session is not None and session.context_exchanges():
            trained = self.bot.trained_image_mode
            session.notice(f"Image preprocessing is now {mode}" + ("" if mode == trained else
                           f" (the model was trained with {trained})") + "; it applies from the next answer.")
        return chat_messages(session), self.model_view(session, mode), session

    def regenerate(self, session):
        if session is not None:
            try:
                session.regenerate()
            except ChatStateError as exc:
                session.error(str(exc)[0].upper() + str(exc)[1:] + ".")
        return chat_messages(session), session, status_html(session)

    def generate(self, mode, temperature, top_p, max_new_tokens, session) -> Iterator[tuple]:
        """Stream the pending answer (if any) into the chat; yields (chat, session, status) per text piece."""
        if session is None or session.pending is None:
            yield chat_messages(session), session, status_html(session)
            return
        try:
            settings = self.bot.settings(self.settings, temperature=float(temperature), top_p=float(top_p),
                                         max_new_tokens=int(max_new_tokens))
        except (TypeError, ValueError) as exc:
            session.fail(session.pending, f"Invalid generation settings: {exc}")
            yield chat_messages(session), session, status_html(session)
            return
        last = 0.0
        for _ in run_turn(self.bot, session, settings, image_mode=mode):
            now = time.monotonic()
            if now - last >= self.min_update_interval:
                last = now
                yield chat_messages(session), session, status_html(session)
        yield chat_messages(session), session, status_html(session)

    def stop(self, session):
        if session is not None:
            session.request_stop()
        return session

    def clear(self, session):
        """Forget the conversation (a running answer is stopped); the image stays for the next question."""
        if session is not None:
            session.reset(keep_image=True)
        return chat_messages(session), {"text": "", "files": []}, session, status_html(session)
