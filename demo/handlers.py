"""What each control of the demo does, as plain functions of the chat state (no gradio objects here).

Every handler takes and returns the `ChatSession` (kept per browser tab in a `gr.State`) and returns the
transcript to show. Nothing a person does can raise out of a handler: bad uploads, actions at the wrong
moment and generation failures all become a message in the chat, and the server carries on.

Memory stays bounded per session: an upload is refused above `max_image_pixels` before it is decoded, and
the decoded image is replaced at once by what the tower needs, its view in each preprocessing mode
(`ChatModel.prepared_views`, 3 x image_size^2 pixels, exact); nothing else is kept in memory. The chat shows
a copy at most `DISPLAY_SIDE` pixels wide from a per-session file in `files_dir` (also what Save writes),
removed with the session (`release`).
"""
from __future__ import annotations

import ctypes
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from mllm.chat.conversation_file import ConversationFileError, read_conversation, save_conversation
from mllm.chat.images import ImageLoadError, explain, open_image, shrink
from mllm.chat.session import ChatSession, ChatStateError, ImageRef
from mllm.chat.turn import run_turn
from mllm.generation import GenerationSettings

logger = logging.getLogger(__name__)
VIEW_SIZE = 224
DEFAULT_MAX_IMAGE_PIXELS = 24_000_000  # a 6000x4000 photo; decoding one costs up to ~10 bytes per pixel
DEFAULT_SESSION_TTL = 3600.0
DISPLAY_SIDE = 512


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


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} seconds"


def release_freed_memory() -> None:
    """Hand memory freed by a large decode back to the system. glibc keeps freed blocks in per-thread arenas
    (gradio runs handlers in a thread pool), so without this the RSS after a few large uploads stays near its
    peak for good (measured: +720 MB retained after a soak; back to +~40 MB with it). No-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class DemoBackend:
    """The model plus the rules of the page; one instance serves every browser tab.

    `files_dir`: where each session's display copies and saved conversations go (default: a new temp dir);
    `max_image_pixels`: the largest upload decoded; `session_ttl`: seconds an idle session is kept (said in
    the notice a returning reader gets; the `gr.State` enforces it).
    """

    def __init__(self, bot, settings: GenerationSettings, min_update_interval: float = 0.08,
                 files_dir: str | Path | None = None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 session_ttl: float = DEFAULT_SESSION_TTL):
        self.bot = bot
        self.settings = settings
        # Each update re-sends and re-renders the chat; ~12 updates/s looks live and keeps a busy browser (and
        # its Stop button) responsive during long answers.
        self.min_update_interval = min_update_interval
        self.files_dir = Path(files_dir if files_dir is not None else tempfile.mkdtemp(prefix="llm2clip-llava-chat-"))
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.max_image_pixels = max_image_pixels
        self.session_ttl = session_ttl

    # ------------------------------------------------------------------ helpers
    def new_session(self, shown=None) -> ChatSession:
        """A fresh session; `shown` (what the page still displays) non-empty means the server forgot this one."""
        session = ChatSession()
        if shown:
            session.notice(f"This conversation was idle for more than {_duration(self.session_ttl)}, so the server "
                           "let it go: the model no longer sees its image or its turns. Attach the image again to "
                           "continue.")
        return session

    def release(self, session: ChatSession | None) -> None:
        """Free a session the server lets go of (idle too long): stop its answer, drop its image and files."""
        if session is None:
            return
        session.close()
        shutil.rmtree(self.files_dir / session.id, ignore_errors=True)

    def _session_dir(self, session: ChatSession) -> Path:
        path = self.files_dir / session.id
        path.mkdir(exist_ok=True)
        return path

    def _display_copy(self, session: ChatSession, image, key: str) -> str:
        """A PNG for the transcript (and for Save), at most `DISPLAY_SIDE` (or twice the tower's input) wide,
        named by content in the session's folder."""
        path = self._session_dir(session) / f"{key[:16]}.png"
        if not path.exists():
            shrink(image, max(DISPLAY_SIDE, 2 * self.bot.processor.image_processor.image_size)).save(path, "PNG")
        return str(path)

    def model_view(self, session: ChatSession | None, image_aspect_ratio: str | None):
        """The image as the model receives it: the mode's geometry at the tower's resolution, enlarged by
        whole pixels (nearest neighbour) to at least `VIEW_SIZE` so small tower inputs stay visible."""
        if session is None or session.image is None:
            return None
        image_aspect_ratio = image_aspect_ratio or self.bot.image_aspect_ratio
        processor = self.bot.processor_for(image_aspect_ratio).image_processor
        view = processor.prepare_image(session.image.view_for(image_aspect_ratio))
        factor = max(1, -(-VIEW_SIZE // view.width))
        return view.resize((view.width * factor, view.height * factor), Image.Resampling.NEAREST)

    def _open(self, source, name: str, session: ChatSession) -> ImageRef:
        """Decode an upload (refused above the pixel cap before decoding); keep only the tower's views of it."""
        try:
            image, key = open_image(source, max_pixels=self.max_image_pixels)
            if session.image is not None and session.image.key == key:
                return session.image
            return ImageRef(None, name, key, display=self._display_copy(session, image, key),
                            views=self.bot.prepared_views(image), size=image.size)
        finally:
            image = None  # the decoded original goes before the trim
            release_freed_memory()

    def _use_upload(self, session: ChatSession, payload) -> bool:
        """Make the session use an uploaded file; False (with the reason in the chat) if it cannot."""
        path, name = upload_path(payload)
        try:
            session.use_image(self._open(path, name, session))
        except ImageLoadError as exc:
            if exc.reason == "missing":
                session.error(f"Cannot use {name}: the upload is no longer on the server (uploads are kept "
                              f"{_duration(self.session_ttl)}). Attach it again.")
            else:
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
    def submit(self, message, image_aspect_ratio, session, shown=None):
        """The message box was sent: text and/or an attached image. Returns (chat, box, model view, session,
        status). `shown`: the chat the page displays (to tell a reader whose session expired).

        A bad attachment is reported in the chat and the question is kept in the box, unsent.
        """
        chat, box, view, session = self._submit(message, image_aspect_ratio, session, shown)
        return chat, box, view, session, status_html(session)

    def _submit(self, message, image_aspect_ratio, session, shown=None):
        session = session or self.new_session(shown)
        text, files = message_parts(message)
        if not text.strip() and not files:
            return chat_messages(session), message, self.model_view(session, image_aspect_ratio), session
        if session.busy:
            session.error("An answer is still being generated: wait for it, or press Stop.")
            return chat_messages(session), message, self.model_view(session, image_aspect_ratio), session
        for payload in files[-1:]:  # one image per conversation: the last attachment wins
            if not self._use_upload(session, payload):
                if text.strip():
                    session.notice("Your question was not sent: attach another image, or send it without one.")
                return (chat_messages(session), {"text": text, "files": []},
                        self.model_view(session, image_aspect_ratio), session)
        if text.strip():
            try:
                session.ask(text)
            except ChatStateError as exc:
                session.error(str(exc))
                return chat_messages(session), message, self.model_view(session, image_aspect_ratio), session
        return (chat_messages(session), {"text": "", "files": []}, self.model_view(session, image_aspect_ratio),
                session)

    def remove_image(self, image_aspect_ratio, session):
        if session is not None and session.image is not None:
            try:
                session.set_image(None, "", "")
            except ChatStateError as exc:
                session.error(str(exc))
        return chat_messages(session), self.model_view(session, image_aspect_ratio), session

    def image_aspect_ratio_changed(self, image_aspect_ratio, session):
        if session is not None and session.context_exchanges():
            trained = self.bot.image_aspect_ratio
            session.notice(f"Image preprocessing is now {image_aspect_ratio}" + (
                           "" if image_aspect_ratio == trained else
                           f" (the model was trained with {trained})") + "; it applies from the next answer.")
        return chat_messages(session), self.model_view(session, image_aspect_ratio), session

    def regenerate(self, session):
        if session is not None:
            try:
                session.regenerate()
            except ChatStateError as exc:
                session.error(str(exc)[0].upper() + str(exc)[1:] + ".")
        return chat_messages(session), session, status_html(session)

    def generate(self, image_aspect_ratio, temperature, top_p, max_new_tokens, session) -> Iterator[tuple]:
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
        for _ in run_turn(self.bot, session, settings, image_aspect_ratio=image_aspect_ratio):
            now = time.monotonic()
            if now - last >= self.min_update_interval:
                last = now
                yield chat_messages(session), session, status_html(session)
        yield chat_messages(session), session, status_html(session)

    def stop(self, session):
        if session is not None:
            session.request_stop()
        return session

    def save(self, session):
        """Write the conversation as a zip (LLaVA JSON + its image) for download. Returns (chat, file)."""
        session = session or self.new_session()
        try:
            path = save_conversation(session, self._session_dir(session) / f"conversation-{session.id[:8]}.zip")
        except (ConversationFileError, OSError) as exc:
            session.error(str(exc)[0].upper() + str(exc)[1:] + ".")
            return chat_messages(session), None, session
        return chat_messages(session), str(path), session

    def load(self, payload, image_aspect_ratio, session):
        """Continue a conversation saved by `save` (a .zip; a .json without its image). Returns (chat, model
        view, session, status)."""
        session = session or self.new_session()
        path, name = upload_path(payload)
        try:
            saved = read_conversation(path)
            if saved.image_name is not None and saved.image_bytes is None:
                raise ConversationFileError(f"cannot load {name}: it names the image {saved.image_name!r} but does "
                                            "not contain it; load the .zip that Save gives")
            image = self._open(saved.image_bytes, saved.image_name, session) if saved.image_name else None
            session.restore(saved.exchanges, image, saved.system, label=name)
        except ConversationFileError as exc:
            session.error(str(exc)[0].upper() + str(exc)[1:].replace(str(path), name) + ".")
        except ImageLoadError as exc:
            session.error(explain(exc, f"the image {saved.image_name} in {name}"))
        except ChatStateError as exc:
            session.error(str(exc)[0].upper() + str(exc)[1:] + ".")
        except Exception as exc:  # an unexpected failure still leaves the page usable
            logger.exception("could not load the conversation %s", name)
            session.error(f"Could not load {name}: {type(exc).__name__}: {exc}")
        return chat_messages(session), self.model_view(session, image_aspect_ratio), session, status_html(session)

    def clear(self, session):
        """Forget the conversation (a running answer is stopped); the image stays for the next question."""
        if session is not None:
            session.reset(keep_image=True)
        return chat_messages(session), {"text": "", "files": []}, session, status_html(session)
