"""The page: header, image + preprocessing view, chat, controls; wired to `DemoBackend` handlers.

Images come in through the message box (attach, paste or drop), which accepts any file so that a bad
upload reaches our checks and gets its real reason in the chat (gradio's image widget rejects or decodes
files itself first). Events go through the queue in two concurrency groups: "decode" (sending a message,
which decodes its attachment, and loading a conversation; `upload_concurrency` at a time, so decoding
memory is bounded) and "generate" (answers, from Send and Regenerate alike; the queue's default limit).
Light events (stop, clear, mode, remove image) skip the queue, so Stop works while every slot is busy.

Sessions (`gr.State`) expire after `backend.session_ttl` idle seconds; gradio's cache (uploads, rendered
views) is swept of files older than that, and emptied when the server stops.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import gradio as gr

from mllm.chat.api import IMAGE_ASPECT_RATIOS

from .handlers import DemoBackend, status_html

ASPECT_RATIO_INFO = {
    "pad": "pad to a square of the mean colour, then resize (LLaVA-1.5)",
    "crop": "resize the short side, centre-crop (CLIP)",
    "resize": "stretch to a square",
}
CSS = """
#header-facts td, #header-facts th { padding: 2px 10px 2px 0; font-size: 0.9em; }
"""


def public_name(value) -> str:
    """A model reference as the page may show it: a local path becomes its folder's name (server paths stay
    private); a hub id such as `lmsys/vicuna-7b-v1.5` stays as it is."""
    text = str(value)
    if os.path.isabs(text) or text.startswith(("~", ".")) or os.path.exists(text):
        return Path(text).expanduser().name or text
    return text


def header_html(info: dict) -> str:
    """Title plus a facts table: model, LLM, tower (by name, never by server path), quantisation (as loaded),
    template, device."""
    quant = info["quantization"]
    if info["adapter"]:
        quant += f" · {info['adapter']}"
    rows = [
        ("Model", public_name(info["model"])),
        ("LLM", public_name(info["llm"])),
        ("Vision tower", public_name(info["tower"])),
        ("Quantisation", quant),
        ("Template", info["template"]),
        ("Compute", f"{info['dtype']} on {info['device']}"),
        ("Image input", f"{info['image_size']}×{info['image_size']} px, {info['num_image_tokens']} tokens, "
                        f"trained with {info['image_aspect_ratio']}"),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<h2>llm2clip-llava chat</h2><table id='header-facts'>{body}</table>"


def build_demo(backend: DemoBackend, examples: list[tuple[str, str]] | None = None,
               image_aspect_ratio: str | None = None, upload_concurrency: int = 1) -> gr.Blocks:
    """Build the Blocks app (not launched). `examples`: [(image path, question)]; `image_aspect_ratio`: the
    preprocessing selected at start (default: the one the model was trained with); `upload_concurrency`:
    messages (with their attachments) and loads decoded at the same time."""
    info = backend.bot.info()
    trained = backend.bot.image_aspect_ratio
    settings = backend.settings
    ttl = backend.session_ttl
    context = backend.bot.processor.model_max_length
    with gr.Blocks(title="llm2clip-llava chat", delete_cache=(max(1, min(600, int(ttl // 2))), int(ttl))) as demo:
        # A plain function, not the bound method: gradio deep-copies the State block for every page load, and
        # a bound method would drag a deep copy of the backend (and its model) along (measured: 15 s per load).
        state = gr.State(None, time_to_live=ttl, delete_callback=lambda session: backend.release(session))
        gr.HTML(header_html(info), elem_id="header")
        with gr.Row():
            with gr.Column(scale=3, min_width=360):
                chatbot = gr.Chatbot(
                    label="Chat", height=520, elem_id="chatbot", feedback_options=None, buttons=["copy"],
                    group_consecutive_messages=False,
                    placeholder="Attach an image with the clip (or paste or drop it on the message box), ask a "
                                "question, press Enter.")
                message = gr.MultimodalTextbox(
                    placeholder="Ask about the image; attach, paste or drop an image here", show_label=False,
                    label="Message", sources=["upload"], file_count="single", file_types=None, lines=1,
                    max_lines=8, max_plain_text_length=100_000, elem_id="message")
                status = gr.HTML(status_html(None), elem_id="status")
                with gr.Row():
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    regenerate = gr.Button("Regenerate", elem_id="regenerate")
                    clear = gr.Button("Clear", elem_id="clear")
                    save = gr.Button("Save", elem_id="save")
                    load = gr.UploadButton("Load", file_types=[".zip", ".json"], file_count="single",
                                           elem_id="load")
                saved = gr.File(label="Saved conversation (LLaVA JSON + image, zipped)", visible=True,
                                interactive=False, height=60, elem_id="saved")
            with gr.Column(scale=2, min_width=280):
                model_view = gr.Image(label="What the model sees", type="pil", interactive=False, height=240,
                                      elem_id="model-view", buttons=["fullscreen"])
                aspect_ratio = gr.Radio(list(IMAGE_ASPECT_RATIOS), value=image_aspect_ratio or trained,
                                        label="Image preprocessing", elem_id="image-mode",
                                        info=f"Trained with {trained}. " + "; ".join(
                                            f"{m}: {ASPECT_RATIO_INFO[m]}" for m in IMAGE_ASPECT_RATIOS))
                remove_image = gr.Button("Remove image", size="sm", elem_id="remove-image")
                with gr.Accordion("Generation", open=True):
                    temperature = gr.Slider(0.0, 2.0, value=settings.temperature, step=0.05, label="Temperature",
                                            info="0 = greedy", elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=settings.top_p if settings.top_p is not None else 1.0,
                                      step=0.05, label="Top-p", elem_id="top-p")
                    max_new_tokens = gr.Slider(1, max(context or 2048, settings.max_new_tokens),
                                               value=settings.max_new_tokens, step=1, label="Max new tokens",
                                               info="an answer never gets more than the room left in the "
                                                    f"model's context window ({context or 'unknown'} tokens)",
                                               elem_id="max-new-tokens")
        if examples:
            gr.Examples(examples=[[{"text": question, "files": [path]}] for path, question in examples],
                        inputs=[message], label="Examples (synthetic scenes drawn by this project)",
                        elem_id="examples")

        generation_inputs = [aspect_ratio, temperature, top_p, max_new_tokens, state]
        fast = dict(queue=False, preprocess=False, show_progress="hidden")
        decode = dict(preprocess=False, show_progress="hidden", concurrency_id="decode",
                      concurrency_limit=upload_concurrency)
        generation_outputs = [chatbot, state, status]
        streamed = dict(show_progress="minimal", show_progress_on=[chatbot], concurrency_id="generate")
        message.submit(backend.submit, [message, aspect_ratio, state, chatbot],
                       [chatbot, message, model_view, state, status],
                       api_name="send", **decode).then(
            backend.generate, generation_inputs, generation_outputs, api_name="generate", **streamed)
        regenerate.click(backend.regenerate, [state], generation_outputs, api_name="regenerate", **fast).then(
            backend.generate, generation_inputs, generation_outputs, api_name="generate_again", **streamed)
        save.click(backend.save, [state], [chatbot, saved, state], api_name="save", **fast)
        load.upload(backend.load, [load, aspect_ratio, state], [chatbot, model_view, state, status], api_name="load",
                    **decode)
        stop.click(backend.stop, [state], [state], **fast)
        for trigger in (clear.click, chatbot.clear):  # our button and the chat's own bin icon
            trigger(backend.clear, [state], [chatbot, message, state, status], **fast)
        remove_image.click(backend.remove_image, [aspect_ratio, state], [chatbot, model_view, state], **fast)
        aspect_ratio.change(backend.image_aspect_ratio_changed, [aspect_ratio, state], [chatbot, model_view, state],
                            **fast)
    return demo


def theme() -> gr.themes.Base:
    """The default look with system fonts: the page loads nothing from the internet."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
