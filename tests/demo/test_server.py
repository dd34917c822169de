"""`llm2clip-llava demo` as a served process, driven through gradio_client on loopback: a login, no server paths
on the page, hostile uploads that cost little memory, idle sessions that expire, and nothing left on disk after
SIGTERM. The tests run in file order against one server; the SIGTERM test comes last."""
from __future__ import annotations

import signal
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from .conftest import DemoServer

pytestmark = pytest.mark.slow
gradio_client = pytest.importorskip("gradio_client")
LOGIN = ("alice", "wonder land")
TTL = 4


@pytest.fixture(scope="module")
def temp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("gradio_temp")


@pytest.fixture(scope="module")
def server(demo_checkpoint, tmp_path_factory, temp_root):
    import os

    logins = tmp_path_factory.mktemp("auth") / "logins.txt"
    logins.write_text(f"# demo users\n{LOGIN[0]}:{LOGIN[1]}\n")
    started = DemoServer(demo_checkpoint, "--auth-file", str(logins), "--session-ttl", str(TTL),
                         "--max-new-tokens", "4", "--temperature", "0", log_dir=tmp_path_factory.mktemp("logs"),
                         env={**os.environ, "GRADIO_TEMP_DIR": str(temp_root)})
    try:
        yield started.wait_ready()
    finally:
        started.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    Image.new("1", (8000, 8000)).save(d / "bomb.png")  # ~8 kB that decode to 64 MP (the issue's +620 MB)
    Image.new("1", (4000, 4000), 1).save(d / "large.png")  # 16 MP, under the default cap: decoded, then dropped
    Image.new("RGB", (64, 48), (200, 40, 40)).save(d / "red.png")
    return d


def client(server, auth=LOGIN):
    return gradio_client.Client(server.url, auth=auth, verbose=False, download_files=False)


def send(c, text, path=None, shown=()):
    files = [gradio_client.handle_file(str(path))] if path is not None else []
    return c.predict({"text": text, "files": files}, "pad", list(shown), api_name="/send")


def texts(chat):
    return [part.get("text", "[image]") for message in chat for part in message["content"]]


def rss_peak_kb(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def test_a_login_is_required(server):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "config", timeout=30)
    assert err.value.code == 401
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        client(server, auth=None)
    with pytest.raises(ValueError, match="Could not login"):
        client(server, auth=(LOGIN[0], "wrong"))
    c = client(server)
    chat = send(c, "What colour?", Path(__file__))  # logged in: the request is served (a .py is no image)
    assert texts(chat[0])[0].startswith("⚠️ Cannot use test_server.py: it is not an image")


def test_page_and_config_name_no_server_path(server, demo_checkpoint):
    import http.cookiejar

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"username": LOGIN[0], "password": LOGIN[1]}).encode()
    opener.open(urllib.request.Request(server.url + "login", data=form), timeout=30)
    page = opener.open(server.url, timeout=30).read().decode()
    config = opener.open(server.url + "config", timeout=30).read().decode()
    assert "tiny-eva02" in config and "tiny-eva02" in page  # logged in: the real page and config
    for text in (page, config):
        assert str(demo_checkpoint) not in text and str(demo_checkpoint.parent) not in text
        assert str(Path.home()) + "/" not in text


def test_hostile_uploads_are_refused_or_reduced_with_little_memory(server, hostile):
    c = client(server)
    send(c, "warm up", hostile / "red.png")  # the first decode pays one-off imports/allocations
    base_rss, base_peak = rss_peak_kb(server.proc.pid)
    results = {}

    def upload(i, name):
        results[i] = send(client(server), "What is this?", hostile / name)[0]

    threads = [threading.Thread(target=upload, args=(i, name))
               for i, name in enumerate(["bomb.png", "bomb.png", "bomb.png", "large.png", "large.png"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    rss, peak = rss_peak_kb(server.proc.pid)
    for i in range(3):
        assert texts(results[i])[0].startswith("⚠️ Cannot use bomb.png: the image is too large (8000x8000")
    for i in (3, 4):
        assert texts(results[i])[1] == "ℹ️ Image large.png (4000×4000) loaded."
    # Three 64 MP bombs cost +1.75 GB before the cap; two 16 MP images (decoded 2 at a time, kept as views) must
    # fit in a few hundred MB of transient memory, and the server must not keep them.
    assert (peak - max(base_peak, base_rss)) < 400_000, (base_rss, base_peak, rss, peak)
    assert rss - base_rss < 100_000, (base_rss, rss)


def test_an_idle_session_expires_and_the_reader_is_told(server, hostile):
    import time

    c = client(server)
    send(c, "What colour?", hostile / "red.png")
    c.predict("pad", 0.0, 0.7, 4, api_name="/generate")
    time.sleep(TTL + 3)  # gradio sweeps expired state every second
    shown = [{"role": "user", "content": [{"type": "text", "text": "What colour?"}]}]  # what the page still shows
    chat = send(c, "And now?", shown=shown)[0]
    assert texts(chat)[0].startswith(f"ℹ️ This conversation was idle for more than {TTL} seconds")


def test_sigterm_removes_uploads_examples_and_session_files(server, temp_root, hostile):
    c = client(server)
    send(c, "What colour?", hostile / "red.png")
    work = [p for p in temp_root.iterdir() if p.name.startswith("llm2clip-llava-demo-")]
    assert len(work) == 1 and (work[0] / "examples" / "red-circle.png").exists()
    assert any(p.name == "red.png" for p in work[0].rglob("*"))  # gradio's copy of the upload
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=120) == 0, server.log()
    assert not work[0].exists()
    assert [p for p in temp_root.rglob("*") if p.is_file()] == []  # gradio's own empty folders at most
