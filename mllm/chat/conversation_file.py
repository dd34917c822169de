"""Save and load a chat as LLaVA's conversation JSON: {"id", "image", "conversations": [{"from", "value"}]}.

The same record LLaVA trains on (`<image>` opens the first question), so a saved chat is also a training or
evaluation sample. Two containers:
- `NAME.json`: the record alone; "image" is the image file's path relative to the JSON's folder (absolute when
  it lives elsewhere). An image that has no file (a demo upload) is written next to it as `NAME.png`.
- `NAME.zip`: `conversation.json` plus the image file it names: one self-contained file (the demo's download).
A system prompt, when set, is kept under an extra "system" key (LLaVA's loaders ignore extra keys). An image
the chat holds only as a smaller copy (a demo upload) is saved as that copy.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..constants import IMAGE_TOKEN
from ..errors import UserError
from .images import png_bytes
from .session import ChatSession

RECORD_NAME = "conversation.json"
MAX_RECORD_BYTES = 16 << 20
MAX_IMAGE_BYTES = 64 << 20
_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


class ConversationFileError(UserError):
    """A conversation file that cannot be read or does not hold a usable conversation."""


@dataclass
class SavedConversation:
    """A conversation read from a file: its exchanges, system prompt, and where its image is."""

    id: str
    exchanges: list[tuple[str, str]]
    system: str | None = None
    image_name: str | None = None  # as written in the record
    image_path: Path | None = None  # a JSON's image, resolved against the JSON's folder
    image_bytes: bytes | None = None  # a zip's image

    @property
    def image_source(self):
        """What `open_image` reads: the zip's bytes or the resolved path (None: a text-only conversation)."""
        return self.image_bytes if self.image_bytes is not None else self.image_path


def conversation_record(session: ChatSession) -> dict:
    """The current conversation (its image's context, every answered turn, trimmed ones included) as a LLaVA
    record; "image" holds the image's name (the writer replaces it with the file's path)."""
    turns = []
    for exchange in session.exchanges:
        if exchange.context == session.context and exchange.usable:
            turns += [{"from": "human", "value": exchange.question}, {"from": "gpt", "value": exchange.answer.strip()}]
    if not turns:
        raise ConversationFileError("there is nothing to save yet: no answered question in this conversation")
    record: dict = {"id": session.id}
    if session.image is not None:
        record["image"] = session.image.name
        turns[0] = {"from": "human", "value": f"{IMAGE_TOKEN}\n{turns[0]['value']}"}
    if session.system:
        record["system"] = session.system
    record["conversations"] = turns
    return record


def save_conversation(session: ChatSession, path: str | os.PathLike) -> Path:
    """Write the current conversation to `path` (`.json` or `.zip`, see the module docstring); returns it."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".json", ".zip"):
        raise ConversationFileError(f"cannot save to {path}: the name must end in .json or .zip")
    record = conversation_record(session)
    image = session.image
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            if image is not None:
                name, data = _image_file(image)
                record["image"] = name
                bundle.writestr(name, data)
            bundle.writestr(RECORD_NAME, json.dumps(record, indent=2, ensure_ascii=False))
    else:
        if image is not None:
            if image.source is not None:
                record["image"] = _relative(Path(image.source), path.parent)
            else:
                name, data = _image_file(image)
                companion = path.with_suffix(Path(name).suffix)
                companion.write_bytes(data)
                record["image"] = companion.name
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_conversation(path: str | os.PathLike) -> SavedConversation:
    """Read a `.json` (a record, or a list holding one) or a `.zip` written by `save_conversation`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConversationFileError(f"cannot load {path}: no such file")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise ConversationFileError(f"cannot load {path}: larger than {MAX_RECORD_BYTES >> 20} MB")
    saved = _parse(path.read_bytes(), path.name)
    if saved.image_name is not None:
        image = Path(saved.image_name).expanduser()
        saved.image_path = image if image.is_absolute() else path.parent / image
    return saved


def _read_zip(path: Path) -> SavedConversation:
    try:
        with zipfile.ZipFile(path) as bundle:
            saved = _parse(_member(bundle, RECORD_NAME, MAX_RECORD_BYTES, path), f"{path.name}:{RECORD_NAME}")
            if saved.image_name is not None:
                saved.image_bytes = _member(bundle, saved.image_name, MAX_IMAGE_BYTES, path)
    except zipfile.BadZipFile as exc:
        raise ConversationFileError(f"cannot load {path.name}: a damaged zip file ({exc})") from exc
    return saved


def _member(bundle: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    try:
        info = bundle.getinfo(name)
    except KeyError:
        raise ConversationFileError(f"cannot load {path.name}: it has no {name}") from None
    if info.file_size > limit:
        raise ConversationFileError(f"cannot load {path.name}: {name} is larger than {limit >> 20} MB")
    with bundle.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ConversationFileError(f"cannot load {path.name}: {name} is larger than {limit >> 20} MB")
    return data


def _parse(data: bytes, name: str) -> SavedConversation:
    """Validate one LLaVA record: alternating human/gpt turns, answered, one image at most, its marker first."""
    def bad(why: str) -> ConversationFileError:
        return ConversationFileError(f"cannot load {name}: {why}")

    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not valid JSON ({exc})") from exc
    if isinstance(record, list):
        if len(record) != 1:
            raise bad(f"it holds {len(record)} conversations; a chat loads one")
        record = record[0]
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise bad('not a LLaVA conversation record ({"id", "image", "conversations": [...]})')
    image = record.get("image")
    if isinstance(image, list):
        if len(image) > 1:
            raise bad(f"it has {len(image)} images; the chat uses one image per conversation")
        image = image[0] if image else None
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise bad('"image" must be a file name')
    turns = record["conversations"]
    roles = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in _ROLES:
            raise bad(f'turn {i} must be {{"from": "human"|"gpt", "value": text}}')
        roles.append(_ROLES[turn["from"]])
    if not turns or roles != ["human", "gpt"] * (len(turns) // 2) or len(turns) % 2:
        raise bad("the turns must alternate human, gpt, ..., starting with a question and ending with its answer")
    values = [turn["value"] for turn in turns]
    markers = [value.count(IMAGE_TOKEN) for value in values]
    if sum(markers[1:]) or markers[0] > 1:
        raise bad(f"{IMAGE_TOKEN} may appear once, in the first question")
    if markers[0] and image is None:
        raise bad(f'the first question has an {IMAGE_TOKEN} marker but there is no "image"')
    values[0] = values[0].replace(IMAGE_TOKEN, "").strip()
    exchanges = [(values[i], values[i + 1].strip()) for i in range(0, len(values), 2)]
    if any(not q.strip() or not a for q, a in exchanges):
        raise bad("every question and answer must have text")
    system = record.get("system")
    return SavedConversation(str(record.get("id", Path(name).stem)), exchanges,
                             system if isinstance(system, str) and system.strip() else None, image)


def _image_file(image) -> tuple[str, bytes]:
    """(name, bytes) of the image to write: the user's file when there is one, else the copy the chat shows
    (the demo's display file), else the image itself as PNG."""
    if image.source is not None and Path(image.source).is_file():
        return Path(image.source).name, Path(image.source).read_bytes()
    stem = Path(image.name).stem or "image"
    if image.display is not None and Path(image.display).is_file():
        return stem + Path(image.display).suffix, Path(image.display).read_bytes()
    if image.image is None:
        raise ConversationFileError(f"the pixels of {image.name} are no longer available")
    return stem + ".png", png_bytes(image.image)


def _relative(target: Path, folder: Path) -> str:
    target, folder = target.resolve(), folder.resolve()
    try:
        return target.relative_to(folder).as_posix()
    except ValueError:
        return str(target)
