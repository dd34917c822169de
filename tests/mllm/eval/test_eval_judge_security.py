"""The judge's API key stays secret (repr, logs, errors, redirects); failures are one line; an unencrypted
endpoint off this machine is warned about; only http(s) endpoints are used at all."""
import http.server
import logging
import threading

import pytest

from mllm.errors import UserError, user_error_types
from mllm.eval import JudgeClient, JudgeConfig, JudgeError

KEY = "sk-live-0123456789abcdef"


class Server:
    """Answers every POST with `status` and `body`; records the Authorization header it received."""

    def __init__(self, status: int, body: bytes, headers: dict | None = None):
        self.auth = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                outer.auth.append(self.headers.get("Authorization"))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def make(*args, **kwargs):
        servers.append(Server(*args, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _ask(config):
    return JudgeClient(config).complete([{"role": "user", "content": "q"}], "gpt-x", 0.0, 3)


def test_key_is_not_in_repr(caplog):
    config = JudgeConfig(base_url="https://api.example.com/v1", api_key=KEY, model="m")
    assert KEY not in repr(config) and KEY not in str(config)
    from mllm.eval.suites.llava_bench import LLaVABench

    assert KEY not in repr(LLaVABench(data="/nowhere", judge=config))  # benchmarks carry the config


def test_judge_failure_is_one_line_without_the_key(serve, caplog):
    echo = (b'{"error": {"message": "Incorrect API key provided: ' + KEY.encode() +
            b'.\\nYou can find your API key at\\n https://example.com"}}\n\n')
    server = serve(401, echo)
    config = JudgeConfig(base_url=server.url, api_key=KEY, retry_wait=0, max_retries=1)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(JudgeError) as info:
            _ask(config)
    message = str(info.value)
    assert "HTTP 401" in message and "\n" not in message and KEY not in message and "***" in message
    assert KEY not in caplog.text
    assert server.auth == [f"Bearer {KEY}"]  # one attempt: a 401 is not retried
    assert isinstance(info.value, UserError) and isinstance(info.value, user_error_types())  # the CLI: one line


def test_unusable_reply_is_one_line(serve):
    server = serve(200, b'{"choices": []}')
    with pytest.raises(JudgeError, match="no choices") as info:
        _ask(JudgeConfig(base_url=server.url, api_key=KEY, retry_wait=0, max_retries=0))
    assert "\n" not in str(info.value)


def test_a_redirect_does_not_carry_the_key_elsewhere(serve):
    elsewhere = serve(200, b'{"choices": [{"message": {"content": "stolen"}}]}')
    redirecting = serve(307, b"", headers={"Location": elsewhere.url + "/chat/completions"})
    with pytest.raises(JudgeError, match="HTTP 307"):
        _ask(JudgeConfig(base_url=redirecting.url, api_key=KEY, retry_wait=0, max_retries=0))
    assert elsewhere.auth == []


@pytest.mark.parametrize("url, warned", [
    ("https://api.openai.com/v1", False), ("http://localhost:8000/v1", False), ("http://127.0.0.1:8000/v1", False),
    ("http://[::1]:8000/v1", False), ("http://judge.example.com/v1", True), ("http://10.0.0.5:8000/v1", True),
])
def test_plain_http_off_this_machine_is_warned(url, warned, caplog):
    with caplog.at_level(logging.WARNING, logger="mllm.eval.judge"):
        JudgeConfig(base_url=url, api_key=KEY)
    assert ("not https" in caplog.text) is warned
    assert KEY not in caplog.text


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/v1", "api.openai.com/v1", ""])
def test_only_http_endpoints_are_used(url, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", url or "x")
    with pytest.raises(JudgeError, match="not an http"):
        JudgeConfig(base_url=url, api_key=KEY)


def test_credentials_in_the_url_are_not_shown(caplog):
    with caplog.at_level(logging.WARNING, logger="mllm.eval.judge"):
        JudgeConfig(base_url="http://user:hunter2@judge.example.com/v1")
    assert "hunter2" not in caplog.text and "judge.example.com" in caplog.text
