"""Conversation templates: one implementation for training, chat, demo and eval.

Conversations come in LLaVA's JSON form (``[{"from": "human"|"gpt", "value": ...}]``; ``user``/``assistant``
and a leading ``system`` turn are accepted too). :func:`render` gives the prompt text; :func:`encode` gives
token ids and labels. Labels come from character spans: each template reports where every assistant
response (plus its end-of-turn text) lies in the rendered string, the string is tokenized with offsets (in
one batched call, the text between image markers as separate pieces like LLaVA's ``tokenizer_image_token``),
and exactly the tokens overlapping those spans are supervised. A sample whose supervised tokens do not
decode back to the responses is rejected with a reason (:class:`TemplateError`), never trained on silently.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

from .constants import IGNORE_INDEX, IMAGE_TOKEN
from .data.labels import check_supervision, label_from_spans, truncate
from .errors import TemplateError
from .tokenization import expand_image_tokens, tokenize_with_offsets

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
ROLE_ALIASES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM}


@dataclass
class Conversation:
    """A validated conversation: optional system text and strictly alternating user/assistant turns."""

    turns: list[tuple[str, str]]
    system: str | None = None
    dropped_leading_assistant: bool = False


def _move_image_markers(text: str) -> str:
    """LLaVA's ``preprocess_multimodal``: markers leave their place and open the turn as ``<image>\\n``."""
    if IMAGE_TOKEN not in text:
        return text
    count = text.count(IMAGE_TOKEN)
    rest = text.replace(IMAGE_TOKEN, "").strip()
    return ((IMAGE_TOKEN + "\n") * count + rest).strip()


def normalize_conversation(conversations, add_generation_prompt: bool = False) -> Conversation:
    """Validate LLaVA-JSON turns and normalise roles and image markers.

    A leading assistant turn is dropped, as LLaVA's ``preprocess_*`` does (``dropped_leading_assistant``
    records it); anything else that breaks user/assistant alternation is an error.
    """
    if isinstance(conversations, Conversation):
        return conversations
    if not isinstance(conversations, list):
        raise TemplateError("malformed_record", f"conversations must be a list, got {type(conversations).__name__}")
    if not conversations:
        raise TemplateError("no_conversations", "conversations is empty")
    system, turns = None, []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise TemplateError("malformed_record", f"turn {i} is a {type(turn).__name__}, not an object")
        role_raw = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        role = ROLE_ALIASES.get(role_raw.lower() if isinstance(role_raw, str) else role_raw)
        if role is None:
            raise TemplateError("unknown_role", f"turn {i} has role {role_raw!r} (expected human/gpt/user/assistant/system)")
        if not isinstance(value, str):
            raise TemplateError("malformed_record", f"turn {i} value is {type(value).__name__}, not a string")
        if role == SYSTEM and i != 0:
            raise TemplateError("non_alternating", f"system turn at position {i}; only the first turn may be system")
        turns.append((i, role, value))
    if turns[0][1] == SYSTEM:
        system = turns.pop(0)[2]
        if not system.strip():
            raise TemplateError("empty_turn", "turn 0 (system) is empty")
    dropped = bool(turns) and turns[0][1] == ASSISTANT
    if dropped:
        turns = turns[1:]
    if not turns:
        raise TemplateError("no_conversations", "no user turn")
    out = []
    for n, (i, role, value) in enumerate(turns):
        if not value.strip():
            raise TemplateError("empty_turn", f"turn {i} ({role}) is empty")
        expected = USER if n % 2 == 0 else ASSISTANT
        if role != expected:
            raise TemplateError("non_alternating", f"turn {i} is {role}, expected {expected}")
        if role == ASSISTANT and IMAGE_TOKEN in value:
            raise TemplateError("image_in_assistant_turn", f"assistant turn {i} contains {IMAGE_TOKEN}")
        out.append((role, _move_image_markers(value)))
    turns = out
    if add_generation_prompt and turns[-1][0] != USER:
        raise TemplateError("non_alternating", "a generation prompt needs a conversation that ends with a user turn")
    return Conversation(turns, system, dropped)


@dataclass
class Rendered:
    """Prompt text plus the character spans ``[start, end)`` of every supervised assistant response."""

    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)
    add_bos: bool = False  # prepend the tokenizer's BOS id (templates whose text does not carry it)


class Template(abc.ABC):
    """Base class: subclasses render a :class:`Conversation` and say where the responses are."""

    name = "base"

    @abc.abstractmethod
    def render(self, conv: Conversation, tokenizer=None, add_generation_prompt: bool = False) -> Rendered:
        """The prompt text and the character spans of the supervised responses."""

    def check(self, tokenizer) -> None:
        """Raise ``ValueError`` now if this template cannot work with ``tokenizer`` (not per sample later)."""


class PlainTemplate(Template):
    """Stage 1 (LLaVA ``plain``): ``<image>`` markers then the caption then ``\\n``; the instruction is dropped."""

    name = "plain"

    def render(self, conv, tokenizer=None, add_generation_prompt=False):
        turns = conv.turns
        if len(turns) != (1 if add_generation_prompt else 2):
            raise TemplateError("template_unsupported", f"plain takes one human turn and one gpt turn, got {len(turns)} turns")
        count = turns[0][1].count(IMAGE_TOKEN)
        if count == 0:
            raise TemplateError("template_unsupported", "plain needs an image marker in the human turn")
        prefix = IMAGE_TOKEN * count
        if add_generation_prompt:
            return Rendered(prefix, [], add_bos=True)
        text = prefix + turns[1][1] + "\n"
        return Rendered(text, [(len(prefix), len(text))], add_bos=True)


class VicunaV1Template(Template):
    """Stage 2 (LLaVA-1.5 ``conv_vicuna_v1``, ``SeparatorStyle.TWO``): byte-identical to LLaVA's get_prompt."""

    name = "vicuna_v1"
    system = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    roles = {USER: "USER", ASSISTANT: "ASSISTANT"}
    seps = {USER: " ", ASSISTANT: "</s>"}

    def render(self, conv, tokenizer=None, add_generation_prompt=False):
        parts = [(self.system if conv.system is None else conv.system) + self.seps[USER]]
        length, spans = len(parts[0]), []
        for role, text in conv.turns:
            head = self.roles[role] + ": "
            parts += [head, text, self.seps[role]]
            # the generation prompt ends at "ASSISTANT:", so the model also predicts the space after it
            start = length + len(head) - 1
            length = start + 1 + len(text) + len(self.seps[role])
            if role == ASSISTANT:
                spans.append((start, length))
        if add_generation_prompt:
            parts.append(self.roles[ASSISTANT] + ":")
        return Rendered("".join(parts), spans, add_bos=True)


_SENTINEL = "\ue000{}\ue001"  # private-use characters: no template or message produces them


class ChatTemplate(Template):
    """The tokenizer's own Jinja chat template (Llama-3, Qwen2.5, Mistral, ...).

    Message positions come from a skeleton: the same conversation shape rendered with unique sentinels as
    contents, split into the literal pieces between them (cached per role sequence), so template text that
    happens to equal a message cannot confuse the spans. An assistant span starts where the generation
    prompt for that turn ends (so a separator the template puts before the content, like Llama-2's space, is
    predicted as it must be at inference) and ends after the end-of-turn text: what the template writes
    after an assistant message up to the first special token (``<|im_end|>``, ``<|eot_id|>``, `` </s>``).
    """

    name = "chat_template"

    def __init__(self):
        self._cache: dict[tuple, object] = {}

    @staticmethod
    def _apply(tokenizer, messages, add_generation_prompt):
        try:
            out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja raise_exception(), missing variables, ...
            raise TemplateError("template_error", f"{type(exc).__name__}: {exc}") from exc
        return out if isinstance(out, str) else out[0]

    @staticmethod
    def _key(tokenizer) -> tuple:
        return (id(tokenizer), str(tokenizer.chat_template), tokenizer.eos_token, tokenizer.bos_token)

    def check(self, tokenizer) -> None:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat_template' needs a tokenizer that has a chat template")
        self.end_of_turn(tokenizer)

    def end_of_turn(self, tokenizer) -> str:
        key = ("eot", *self._key(tokenizer))
        if key not in self._cache:
            probe = [{"role": USER, "content": _SENTINEL.format(0)}, {"role": ASSISTANT, "content": _SENTINEL.format(1)}]
            text = self._apply(tokenizer, probe, False)
            marker = _SENTINEL.format(1)
            if marker not in text:
                raise ValueError("the tokenizer's chat template does not render assistant messages verbatim")
            suffix = text[text.rindex(marker) + len(marker):]
            specials = [t for t in _special_strings(tokenizer) if t and t in suffix]
            if specials:
                end = min(suffix.index(t) + len(t) for t in specials)
            elif "\n" in suffix:
                end = suffix.index("\n") + 1
            else:
                end = len(suffix)
            if end == 0:
                raise ValueError("the tokenizer's chat template writes nothing after an assistant turn: no end-of-turn to learn")
            self._cache[key] = suffix[:end]
        return self._cache[key]

    def _shape(self, tokenizer, roles: tuple, add_generation_prompt: bool):
        """Literal pieces between messages, and per assistant turn how many characters of the piece before
        it come after that turn's generation prompt (0 when the generation prompt is not a prefix)."""
        key = ("shape", *self._key(tokenizer), roles, add_generation_prompt)
        if key not in self._cache:
            messages = [{"role": r, "content": _SENTINEL.format(i)} for i, r in enumerate(roles)]
            skeleton = self._apply(tokenizer, messages, add_generation_prompt)
            pieces = _split_sentinels(skeleton, len(roles))
            gaps = {}
            for k, role in enumerate(roles):
                if role != ASSISTANT:
                    continue
                at = skeleton.index(_SENTINEL.format(k))
                try:
                    prompt = self._apply(tokenizer, messages[:k], True)
                except TemplateError:
                    prompt = None
                ok = prompt is not None and skeleton.startswith(prompt) and at - len(pieces[k]) <= len(prompt) <= at
                gaps[k] = at - len(prompt) if ok else 0
            self._cache[key] = (pieces, gaps)
        return self._cache[key]

    def render(self, conv, tokenizer=None, add_generation_prompt=False):
        self.check(tokenizer)
        eot = self.end_of_turn(tokenizer)
        turns = ([(SYSTEM, conv.system)] if conv.system is not None else []) + list(conv.turns)
        real = self._apply(tokenizer, [{"role": r, "content": t} for r, t in turns], add_generation_prompt)
        pieces, gaps = self._shape(tokenizer, tuple(r for r, _ in turns), add_generation_prompt)
        located = _locate(real, pieces, [t for _, t in turns])
        spans = []
        for k, ((role, _), (start, end)) in enumerate(zip(turns, located)):
            if role == ASSISTANT:
                if not real.startswith(eot, end):
                    raise TemplateError("template_mismatch", f"assistant turn not followed by the end-of-turn text {eot!r}")
                spans.append((start - gaps[k], end + len(eot)))
        return Rendered(real, spans, add_bos=False)


def _special_strings(tokenizer) -> list[str]:
    found = set(tokenizer.all_special_tokens)
    found.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)
    found.discard(IMAGE_TOKEN)
    return sorted(found)


def _split_sentinels(skeleton: str, count: int) -> list[str]:
    pieces, pos = [], 0
    for i in range(count):
        marker = _SENTINEL.format(i)
        if skeleton.count(marker) != 1:
            raise TemplateError("template_mismatch", f"the chat template renders message {i} {skeleton.count(marker)} times")
        at = skeleton.index(marker)
        if at < pos:
            raise TemplateError("template_mismatch", f"the chat template moves message {i} before message {i - 1}")
        pieces.append(skeleton[pos:at])
        pos = at + len(marker)
    pieces.append(skeleton[pos:])
    return pieces


def _locate(real: str, pieces: list[str], contents: list[str]) -> list[tuple[int, int]]:
    """Match ``real`` = pieces[0] c0' pieces[1] c1' ... where ci' is ci, possibly stripped by the template."""
    if not real.startswith(pieces[0]):
        raise TemplateError("template_mismatch", "rendered prompt does not start like the template skeleton")
    pos, spans = len(pieces[0]), []
    for i, content in enumerate(contents):
        for cand in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            if real.startswith(cand, pos) and real.startswith(pieces[i + 1], pos + len(cand)):
                spans.append((pos, pos + len(cand)))
                pos += len(cand) + len(pieces[i + 1])
                break
        else:
            raise TemplateError("template_mismatch", f"cannot locate message {i} in the rendered prompt")
    if pos != len(real):
        raise TemplateError("template_mismatch", "rendered prompt has unexplained trailing text")
    return spans


TEMPLATES: dict[str, Template] = {}


def register_template(template: Template, *aliases: str) -> Template:
    """Add a template to the registry under its ``name`` (and aliases)."""
    for key in (template.name, *aliases):
        TEMPLATES[key] = template
    return template


register_template(PlainTemplate())
register_template(VicunaV1Template(), "v1")
register_template(ChatTemplate())


def get_template(template: str | Template) -> Template:
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[template]


def render_spans(conversations, template, tokenizer=None, add_generation_prompt: bool = False) -> Rendered:
    """Render and return the text together with the supervised character spans."""
    conv = normalize_conversation(conversations, add_generation_prompt)
    return get_template(template).render(conv, tokenizer, add_generation_prompt)


def render(conversations, template, tokenizer=None, add_generation_prompt: bool = False) -> str:
    """The prompt text: all turns (training form) or history plus an open assistant turn (generation form)."""
    return render_spans(conversations, template, tokenizer, add_generation_prompt).text


@dataclass
class Encoded:
    """Token ids and labels after image expansion (and truncation)."""

    input_ids: list[int]
    labels: list[int]
    num_images: int
    truncated: bool
    length_before_truncation: int
    text: str
    dropped_leading_assistant: bool = False


def encode(
    conversations,
    template,
    tokenizer,
    *,
    image_token_id: int | None,
    num_image_tokens: int,
    max_length: int | None = None,
    add_generation_prompt: bool = False,
) -> Encoded:
    """Tokenize with offsets, supervise the tokens overlapping assistant spans, expand image markers.

    Raises :class:`TemplateError` (``reason`` for counting) for conversations that cannot be encoded.
    """
    conv = normalize_conversation(conversations, add_generation_prompt)
    rendered = get_template(template).render(conv, tokenizer, add_generation_prompt)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("encode needs a fast (tokenizers-backed) tokenizer for offset mappings")
    num_images = rendered.text.count(IMAGE_TOKEN)
    if num_images and image_token_id is None:
        raise ValueError(f"the conversation has {IMAGE_TOKEN} markers but no image_token_id was given")
    known = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) if num_images else None
    if num_images and (known is None or known == tokenizer.unk_token_id or known != image_token_id):
        raise ValueError(f"image_token_id {image_token_id} is not the tokenizer's {IMAGE_TOKEN} id (add_image_token?)")
    ids, offsets = tokenize_with_offsets(tokenizer, rendered.text, image_token_id if num_images else None)
    bos = tokenizer.bos_token_id
    if rendered.add_bos and bos is not None and (not ids or ids[0] != bos):
        ids, offsets = [bos, *ids], [(0, 0), *offsets]
    if add_generation_prompt:
        labels = [IGNORE_INDEX] * len(ids)
    else:
        if not rendered.spans:
            raise TemplateError("no_assistant_turn", "nothing to supervise: the conversation has no assistant turn")
        labels = label_from_spans(ids, offsets, rendered.spans)
        check_supervision(tokenizer, rendered.text, ids, offsets, labels, rendered.spans)
    if num_images:
        ids, labels = expand_image_tokens(ids, image_token_id, num_image_tokens, labels)
    full = len(ids)
    truncated = False
    if max_length is not None and full > max_length:
        ids, labels = truncate(ids, labels, image_token_id, max_length, generation=add_generation_prompt)
        truncated = True
    return Encoded(ids, labels, num_images, truncated, full, rendered.text, conv.dropped_leading_assistant)
