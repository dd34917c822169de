"""The demo as a person uses it: headless Chromium (Playwright) against `llm2clip-llava demo` on loopback.

Two servers run the real command in subprocesses: one on a tiny random checkpoint (long answers, so
streaming, stop and regenerate are observable) and one on `quickstart_model` (the correctness check).
A screenshot of the chat lands in test-artifacts/.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from .conftest import ARTIFACTS, QUICKSTART_SETTINGS, DemoServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
CHROMIUM = os.environ.get("LLM2CLIP_LLAVA_CHROMIUM", "/usr/bin/chromium")
# Without these, a machine without network access makes Chromium slow or fail at start.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
PLUMBING_MAX_NEW_TOKENS = 24
STREAM_TOKENS = 96  # long enough to span several of the demo's ~12 chat updates per second on any machine
TIMEOUT_MS = 120_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (scripts/setup.sh --browser installs it; or set LLM2CLIP_LLAVA_CHROMIUM)",
                allow_module_level=True)

_MESSAGES_JS = """() => Array.from(document.querySelectorAll('#chatbot [data-testid="user"], #chatbot [data-testid="bot"]'))
    .map(el => ({role: el.dataset.testid, text: el.innerText.trim(), images: el.querySelectorAll('img').length}))"""
_WATCH_JS = """() => {
    window.__partials = [];
    const chat = document.querySelector('#chatbot');
    new MutationObserver(() => {
        const bots = chat.querySelectorAll('[data-testid="bot"]');
        const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
        if (text && window.__partials[window.__partials.length - 1] !== text) window.__partials.push(text);
    }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def squash(text: str) -> str:
    """Letters and digits only, lower-cased: compares answers across markdown rendering."""
    return re.sub(r"[\W_]+", "", text.lower())


class DemoPage:
    def __init__(self, page, url: str):
        self.page = page
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#chatbot")
        page.wait_for_selector("#message textarea")  # the input box renders after the chat (scripts query it)
        page.wait_for_selector("#status .chat-status[data-state='idle']")

    def messages(self) -> list[dict]:
        return self.page.evaluate(_MESSAGES_JS)

    def finished(self) -> int:
        return int(self.page.locator("#status .chat-status").get_attribute("data-finished"))

    def attach(self, path) -> None:
        self.page.locator("#message input[type=file]").set_input_files(str(path))
        self.page.locator("#message .thumbnail-item").wait_for()  # shown once the upload is done

    def send(self, text: str) -> None:
        box = self.page.locator("#message textarea")
        box.fill(text)
        box.press("Enter")

    def wait_finished(self, count: int) -> None:
        self.page.wait_for_selector(f"#status .chat-status[data-state='idle'][data-finished='{count}']")

    def ask(self, text: str, image=None) -> str:
        """Send (with an attachment), wait for the answer to finish, return the answer bubble's text."""
        done = self.finished()
        if image is not None:
            self.attach(image)
        self.send(text)
        self.wait_finished(done + 1)
        return self.answer_to(text)

    def answer_to(self, question: str) -> str:
        messages = self.messages()
        last_q = max(i for i, m in enumerate(messages) if m["role"] == "user" and m["text"] == question.strip())
        return messages[last_q + 1]["text"] if last_q + 1 < len(messages) else ""

    def clear(self) -> None:
        """Press Clear and wait for its result: it empties the message box too (so attach after it), which is
        what we wait for, with a draft typed first."""
        self.page.locator("#message textarea").fill("draft")
        self.page.locator("#clear").click()
        self.page.wait_for_function("document.querySelector('#message textarea').value === '' && "
                                    "document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length === 0")

    def set_slider(self, elem_id: str, value) -> None:
        number = self.page.locator(f"#{elem_id} input[type=number]")
        number.fill(str(value))
        number.press("Enter")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def servers(demo_checkpoint, quickstart_model, quickstart_home, tmp_path_factory):
    logs = tmp_path_factory.mktemp("demo_logs")
    model_dir, _ = quickstart_model
    started = [
        DemoServer(demo_checkpoint, "--temperature", "0", "--max-new-tokens", str(PLUMBING_MAX_NEW_TOKENS),
                   "--concurrency", "4", log_dir=logs),
        DemoServer(model_dir, "--temperature", str(QUICKSTART_SETTINGS["temperature"]),
                   "--max-new-tokens", str(QUICKSTART_SETTINGS["max_new_tokens"]), log_dir=logs,
                   env=quickstart_home.env),
    ]
    try:
        yield [server.wait_ready() for server in started]  # both start at once; wait for each
    finally:
        for server in started:
            server.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser_images")
    colours = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (235, 200, 30), (140, 60, 180), (245, 130, 20),
               (30, 190, 200), (120, 120, 120)]
    paths = []
    for i, colour in enumerate(colours):
        paths.append(d / f"colour{i}.png")
        Image.new("RGB", (48 + 8 * i, 40), colour).save(paths[-1])
    (d / "notes.txt").write_text("not an image")
    (d / "renamed.png").write_text("a text file with an image's name")
    (d / "empty.png").write_bytes(b"")
    Image.new("1", (9000, 9000)).save(d / "huge.png")  # 81 megapixels, a few kB on disk
    return d, paths


def test_upload_ask_stream_regenerate_clear(servers, page, images, demo_bot):
    plumbing, _ = servers
    _, paths = images
    demo = DemoPage(page, plumbing.url)
    header = page.locator("#header").inner_text()
    assert "tiny-eva02" in header and "Quantisation\tnone" in header and str(plumbing.url) not in header
    page.evaluate(_WATCH_JS)
    demo.set_slider("max-new-tokens", STREAM_TOKENS)

    question = "What colour is this?"
    answer = demo.ask(question, image=paths[0])
    expected = demo_bot.chat(question, paths[0], temperature=0.0, max_new_tokens=STREAM_TOKENS)
    assert squash(answer) == squash(expected) and answer
    messages = demo.messages()
    assert messages[0]["role"] == "user" and messages[0]["images"] == 1  # the uploaded image is in the chat
    partials = [p for p in page.evaluate("window.__partials") if squash(answer).startswith(squash(p))]
    assert len({squash(p) for p in partials}) >= 3, partials  # the answer arrived in pieces
    model_view = page.locator("#model-view img")
    assert model_view.count() == 1  # what the model sees is shown
    assert page.locator("#image-mode input[value='pad']").is_checked()

    # a follow-up uses the history
    follow_up = demo.ask("Are you sure?")
    history = [{"role": "user", "content": question}, {"role": "assistant", "content": expected},
               {"role": "user", "content": "Are you sure?"}]
    assert squash(follow_up) == squash(demo_bot.chat(history, paths[0], max_new_tokens=STREAM_TOKENS))

    # regenerate with sampling: a new answer replaces the old one
    demo.set_slider("temperature", 1.0)
    done = demo.finished()
    page.locator("#regenerate").click()
    demo.wait_finished(done + 1)
    regenerated = demo.answer_to("Are you sure?")
    assert regenerated and squash(regenerated) != squash(follow_up)
    assert [m["text"] for m in demo.messages() if m["role"] == "user"].count("Are you sure?") == 1
    demo.screenshot("demo-chat.png")

    # clear: the chat empties, the image stays for the next question
    demo.clear()
    assert [m["images"] for m in demo.messages()] == [1]
    demo.set_slider("temperature", 0)
    again = demo.ask(question)
    assert squash(again) == squash(expected)  # same image, fresh history: the first answer again


def test_stop_ends_a_long_answer(servers, page, images):
    plumbing, _ = servers
    demo = DemoPage(page, plumbing.url)
    demo.set_slider("max-new-tokens", 2000)
    done = demo.finished()
    demo.attach(images[1][1])
    demo.send("Tell me everything.")
    page.wait_for_selector("#status .chat-status[data-state='generating']")
    page.locator("#stop").click()
    demo.wait_finished(done + 1)
    texts = [m["text"] for m in demo.messages()]
    assert texts[-1] == "ℹ️ Stopped."
    partial = demo.answer_to("Tell me everything.")
    time.sleep(1.0)
    assert demo.answer_to("Tell me everything.") == partial  # nothing arrives after the stop


_PASTE_JS = """async () => {
    const canvas = document.createElement('canvas');
    canvas.width = 50; canvas.height = 30;
    const g = canvas.getContext('2d'); g.fillStyle = 'rgb(0, 170, 0)'; g.fillRect(0, 0, 50, 30);
    const blob = await new Promise(resolve => canvas.toBlob(resolve, 'image/png'));
    const data = new DataTransfer();
    data.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
    const box = document.querySelector('#message textarea');
    box.focus();
    box.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
}"""


def test_paste_an_image_and_use_an_example(servers, page, demo_bot, tmp_path):
    from demo.examples import make_examples

    plumbing, _ = servers
    demo = DemoPage(page, plumbing.url)
    page.evaluate(_PASTE_JS)
    page.locator("#message .thumbnail-item").wait_for()
    done = demo.finished()
    demo.send("What is pasted?")
    demo.wait_finished(done + 1)
    pasted = Image.new("RGB", (50, 30), (0, 170, 0))
    assert squash(demo.answer_to("What is pasted?")) == squash(
        demo_bot.chat("What is pasted?", pasted, max_new_tokens=PLUMBING_MAX_NEW_TOKENS))
    assert "Image pasted.png (50×30) loaded." in [m["text"].lstrip("ℹ️ ") for m in demo.messages()]

    image_path, question = make_examples(tmp_path)[0]  # the demo draws the same examples (deterministic)
    done = demo.finished()
    page.locator("#examples .gallery-item").first.click()
    page.locator("#message .thumbnail-item").wait_for()
    assert page.locator("#message textarea").input_value() == question
    page.locator("#message textarea").press("Enter")
    demo.wait_finished(done + 1)
    assert squash(demo.answer_to(question)) == squash(
        demo_bot.chat(question, image_path, max_new_tokens=PLUMBING_MAX_NEW_TOKENS))


@pytest.mark.parametrize("name, reason", [
    ("notes.txt", "it is not an image"), ("renamed.png", "it is not an image"),
    ("empty.png", "the file is empty (0 bytes)"), ("huge.png", "the image is too large (9000x9000"),
])
def test_bad_upload_is_explained_in_the_chat(servers, page, images, name, reason):
    plumbing, _ = servers
    directory, paths = images
    demo = DemoPage(page, plumbing.url)
    demo.attach(directory / name)
    demo.send("What is this?")
    page.get_by_text(f"Cannot use {name}: {reason}").wait_for()
    assert page.locator("#message textarea").input_value() == "What is this?"  # kept, not sent
    if name == "huge.png":
        demo.screenshot("demo-bad-upload.png")
    assert plumbing.alive()
    assert demo.ask("What is this?", image=paths[2])  # the same page carries on with a good image


def test_binds_loopback_only(servers):
    """The default host is 127.0.0.1: the listening socket is not reachable from other machines."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        pytest.skip("needs Linux /proc/net/tcp")
    for server in servers:
        port = f"{server.port:04X}"
        listening = [line.split()[1] for line in table.read_text().splitlines()[1:]
                     if line.split()[1].endswith(f":{port}") and line.split()[3] == "0A"]
        assert listening == [f"0100007F:{port}"], listening  # 127.0.0.1, not 0.0.0.0


def test_eight_concurrent_sessions(servers, browser, images, demo_bot):
    """8 browser sessions ask at once (4 generate, 4 wait in the queue); each gets its own answer."""
    plumbing, _ = servers
    _, paths = images
    contexts = [browser.new_context(viewport={"width": 1100, "height": 900}) for _ in range(8)]
    try:
        demos = [DemoPage(context.new_page(), plumbing.url) for context in contexts]
        questions = [f"Which colour is picture {i}?" for i in range(8)]
        for demo, path in zip(demos, paths):
            demo.attach(path)
        for demo, question in zip(demos, questions):
            demo.send(question)
        for demo in demos:
            demo.wait_finished(1)
        for demo, question, path in zip(demos, questions, paths):
            expected = demo_bot.chat(question, path, temperature=0.0, max_new_tokens=PLUMBING_MAX_NEW_TOKENS)
            assert squash(demo.answer_to(question)) == squash(expected)
            assert not any(m["text"].startswith("⚠️") for m in demo.messages())
    finally:
        for context in contexts:
            context.close()
    assert plumbing.alive()


def test_quickstart_model_answers_held_out_questions(servers, page, quickstart_model):
    """The acceptance check: with the quickstart checkpoint, the demo answers held-out synthetic questions."""
    _, quick = servers
    _, cases = quickstart_model
    demo = DemoPage(page, quick.url)
    for image_path, question, expected in cases:
        demo.clear()
        answer = demo.ask(question, image=image_path)
        assert squash(answer) == squash(expected), (question, answer, expected)
    demo.screenshot("demo-quickstart.png")


def test_quickstart_five_turns_keep_their_context(servers, page, quickstart_home, quickstart_conversation):
    """Acceptance: five turns about one held-out image, with max-new-tokens at the whole 512-token window (the
    issue's setting): no context notice, every answer the gold one and the API's answer to the whole conversation
    so far."""
    from mllm.chat import load

    _, quick = servers
    image, questions = quickstart_conversation
    demo = DemoPage(page, quick.url)
    demo.set_slider("max-new-tokens", 512)
    answers = [demo.ask(question, image=image if turn == 0 else None) for turn, (question, _) in enumerate(questions)]
    texts = [m["text"] for m in demo.messages()]
    assert not any("context window" in t or "cut off" in t or t.startswith("⚠️") for t in texts), texts
    assert [squash(a) for a in answers] == [squash(gold) for _, gold in questions]  # held out, in context
    bot = load(quickstart_home.model_dir)
    messages = []
    for (question, _), answer in zip(questions, answers):
        messages.append({"role": "user", "content": question})
        expected = bot.chat(messages, image, temperature=0.0, max_new_tokens=512)
        assert squash(answer) == squash(expected), (question, answer, expected)
        messages.append({"role": "assistant", "content": expected})
    demo.screenshot("demo-five-turns.png")
