"""The llava-hf processor of an export: chat template, tokenizer and image processor that reproduce ours.

- Chat template: a Jinja template that normalises messages as `mllm.templates` does (HF content lists or
  strings, `<image>` markers moved to the front of their turn as `<image>\\n`) and then renders `vicuna_v1`
  or `plain` byte for byte, or hands the normalised messages to the tokenizer's own template (`chat_template`).
- Tokenizer: LLaVA (and we) tokenize the text after each image as a piece of its own, so a SentencePiece
  tokenizer that adds a prefix space only at the start of a text ("first" Metaspace, Llama/Vicuna/Mistral)
  puts "▁" (Vicuna: id 29871) right after every image; a processor tokenizing the whole prompt at once would
  not. Where the two differ, the exported tokenizer.json gets a normaliser writing that "▁" after an `<image>`
  that is followed by text, so one-call tokenization gives our ids (also in engines that tokenize the prompt
  before expanding `<image>`, such as vLLM), and tokenizer_config.json names the generic fast tokenizer class,
  which loads tokenizer.json as it is (transformers' LlamaTokenizer would rebuild the pipeline).
- Image processor: `LlavaImageProcessor`; `pad` = `do_pad` (LLaVA's expand-to-square in the mean colour) then a
  resize to the tower's size, `resize` = a plain resize, `crop` = shortest-edge resize + centre crop.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..constants import IMAGE_TOKEN
from ..templates import VicunaV1Template, render
from ..tokenization import ensure_bos, tokenize_with_offsets
from .source import InteropError

# messages -> `msgs`: roles user/assistant/system, string contents with image markers moved as ours are
_NORMALISE = """\
{%- set ns = namespace(msgs=[]) -%}
{%- for message in messages -%}
{%- set role = {'human': 'user', 'gpt': 'assistant'}.get(message['role'], message['role']) -%}
{%- if message['content'] is string -%}
{%- set text = message['content'] -%}
{%- else -%}
{%- set parts = namespace(items=[]) -%}
{%- for part in message['content'] -%}
{%- if part['type'] in ('image', 'image_url') -%}{%- set parts.items = parts.items + ['<image>'] -%}
{%- elif part['type'] == 'text' and part['text'] -%}{%- set parts.items = parts.items + [part['text']] -%}
{%- endif -%}
{%- endfor -%}
{%- set text = parts.items | join('\\n') -%}
{%- endif -%}
{%- if role != 'system' and '<image>' in text -%}
{%- set text = ('<image>\\n' * text.count('<image>') + text.replace('<image>', '') | trim) | trim -%}
{%- endif -%}
{%- set ns.msgs = ns.msgs + [{'role': role, 'content': text}] -%}
{%- endfor -%}
{%- set system = none -%}
{%- if ns.msgs and ns.msgs[0]['role'] == 'system' -%}{%- set system = ns.msgs[0]['content'] -%}{%- set ns.msgs = ns.msgs[1:] -%}{%- endif -%}
{%- if ns.msgs and ns.msgs[0]['role'] == 'assistant' -%}{%- set ns.msgs = ns.msgs[1:] -%}{%- endif -%}
{%- for message in ns.msgs -%}
{%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}
{{- raise_exception('messages must alternate user/assistant after an optional system message') -}}
{%- endif -%}
{%- endfor -%}
"""

_VICUNA_V1 = """\
{{- (system if system is not none else SYSTEM) + ' ' -}}
{%- for message in ns.msgs -%}
{%- if message['role'] == 'user' -%}{{- 'USER: ' + message['content'] + ' ' -}}
{%- else -%}{{- 'ASSISTANT: ' + message['content'] + '</s>' -}}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}
"""

_PLAIN = """\
{%- if ns.msgs | length != 1 or not add_generation_prompt -%}
{{- raise_exception('the plain template takes one user message and a generation prompt') -}}
{%- endif -%}
{{- '<image>' * ns.msgs[0]['content'].count('<image>') -}}
"""

# the tokenizer's own template sees the normalised messages (a system message first when there is one)
_HANDOVER = """\
{%- set messages = ([{'role': 'system', 'content': system}] if system is not none else []) + ns.msgs -%}
"""


TEMPLATES = ("vicuna_v1", "v1", "plain", "chat_template")


def chat_template(template: str, tokenizer) -> str:
    """The Jinja chat template that renders `template` (one of ours) for HF-style messages."""
    if template in ("vicuna_v1", "v1"):
        return _NORMALISE + _VICUNA_V1.replace("SYSTEM", json.dumps(VicunaV1Template.system))
    if template == "plain":
        return _NORMALISE + _PLAIN
    if template == "chat_template":
        own = getattr(tokenizer, "chat_template", None)
        if not isinstance(own, str) or not own:
            raise InteropError("template chat_template: the tokenizer has no chat template to export")
        return _NORMALISE + _HANDOVER + own
    raise InteropError(f"template {template!r} has no llava-hf chat template")


# ------------------------------------------------------------------------------------------ checks
def probe_conversations(template: str) -> list[list[dict]]:
    """(HF messages) conversations the export is verified on: images, several turns, a system message."""
    if template == "plain":
        return [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]]
    return [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "text", "text": "with"},
                                      {"type": "image"}]}],
        [{"role": "system", "content": "Answer briefly."},
         {"role": "user", "content": "<image>\nWhat colour is it?"},
         {"role": "assistant", "content": "Red."},
         {"role": "user", "content": [{"type": "text", "text": "And the shape?  "}]}],
        [{"role": "user", "content": "Say hi without an image."}],
        [{"role": "user", "content": "Two lines\nthen <image> in the middle"}],
    ]


def as_llava_json(messages: list[dict]) -> list[dict]:
    """HF messages → our conversation form, joining content parts as our chat API does."""
    turns = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = "\n".join(IMAGE_TOKEN if p["type"] == "image" else p["text"] for p in content
                                if p["type"] == "image" or p.get("text"))
        turns.append({"role": message["role"], "content": content})
    return turns


def check_processor(processor, template: str, image_token_id: int) -> None:
    """The saved processor renders and tokenizes every probe conversation exactly as our code does."""
    tokenizer = processor.tokenizer
    for messages in probe_conversations(template):
        theirs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ours = render(as_llava_json(messages), template, tokenizer, add_generation_prompt=True)
        if theirs != ours:
            raise InteropError(f"the exported chat template renders {theirs!r} where {template} renders {ours!r}")
        add_bos = template != "chat_template"
        expected = tokenize_with_offsets(tokenizer, ours, image_token_id)[0]
        expected = ensure_bos(tokenizer, expected) if add_bos else expected
        got = tokenizer(ours, add_special_tokens=add_bos)["input_ids"]
        if got != expected:
            raise InteropError(f"the exported tokenizer gives {got} for {ours!r}, the model was trained on {expected}")


# ------------------------------------------------------------------------------------------ tokenizer
def adjust_tokenizer(tokenizer, image_token_id: int, add_bos: bool) -> tuple[list[str], bool]:
    """Make one-call tokenization of a prompt equal ours (see the module docstring), in memory.

    Returns (what changed, whether tokenizer.json must be loaded as it is: `save_tokenizer(generic_class=...)`).
    """
    changes = []
    if add_bos and tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] != [tokenizer.bos_token_id]:
        tokenizer.add_bos_token = True
        changes.append("BOS added by the tokenizer")
    probe = f"USER: {IMAGE_TOKEN}\nWhat? ASSISTANT:"
    if tokenizer(probe, add_special_tokens=False)["input_ids"] == tokenize_with_offsets(tokenizer, probe, image_token_id)[0]:
        return changes, False
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = backend.get("pre_tokenizer") or {}
    if pre.get("type") != "Metaspace" or pre.get("prepend_scheme") != "first" or backend.get("normalizer"):
        raise InteropError("the tokenizer splits text after <image> differently from one-call tokenization and is "
                           f"not a SentencePiece tokenizer this export knows how to adjust (pre-tokenizer {pre.get('type')})")
    replacement = pre.get("replacement", "\u2581")
    for token in backend["added_tokens"]:
        if token["content"] == IMAGE_TOKEN:
            token["normalized"] = True  # matched after the normaliser below has run
    backend["normalizer"] = {"type": "Replace",
                             "pattern": {"Regex": f"<image>(?![ {replacement}]|<image>|\\z)"},
                             "content": IMAGE_TOKEN + replacement}
    from tokenizers import Tokenizer

    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(backend))
    changes.append(f"'{replacement}' after <image> as in LLaVA's piecewise tokenization")
    return changes, True


def save_tokenizer(tokenizer, directory: str | Path, template_text: str, generic_class: bool) -> None:
    """Save with the chat template in every place a loader looks (chat_template.jinja, tokenizer_config.json)."""
    directory = Path(directory)
    tokenizer.chat_template = template_text
    tokenizer.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template_text  # transformers < 4.43 reads it only here
    if generic_class:
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def image_processor(tower_config, image_aspect_ratio: str):
    """transformers' LlavaImageProcessor doing what our `ImageProcessor` does with `image_aspect_ratio`."""
    from transformers import LlavaImageProcessor

    side = tower_config.image_size
    common = {"image_mean": list(tower_config.image_mean), "image_std": list(tower_config.image_std),
              "do_resize": True, "resample": 3, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
              "crop_size": {"height": side, "width": side}}  # resample 3 = bicubic
    if image_aspect_ratio == "crop":
        return LlavaImageProcessor(do_pad=False, size={"shortest_edge": side}, do_center_crop=True, **common)
    return LlavaImageProcessor(do_pad=image_aspect_ratio == "pad", size={"height": side, "width": side},
                               do_center_crop=False, **common)
