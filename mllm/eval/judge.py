"""A minimal OpenAI-compatible chat-completions client for the GPT-judged benchmarks (stdlib only).

Judging runs only when an endpoint is configured: ``JudgeConfig.from_env()`` returns None unless
``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is set. Replies are cached in a JSONL file keyed by a hash of the
request, so an interrupted or repeated scoring run never pays twice for the same review.

The API key never appears in a repr, a log line or an error message (a server echoing it back is redacted);
a judge failure is one line; an endpoint that is neither https nor this machine is warned about, since the
key and every answer would cross the network unencrypted, and only http(s) URLs are accepted at all.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
logger = logging.getLogger(__name__)


class JudgeError(UserError, RuntimeError):
    """The judge endpoint could not be reached, refused the request, or answered with something unusable."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _shown_url(url: str) -> str:
    """`url` without any user:password part, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urllib.parse.urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would resend the Authorization header to wherever it points: report it as an HTTP error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


@dataclass
class JudgeConfig:
    """Where and how to call the judge. ``model=None`` lets each benchmark use its official judge model."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)  # never shown: not in repr, logs or errors
    model: str | None = None
    timeout: float = 120.0
    max_retries: int = 5
    retry_wait: float = 2.0
    cache_path: str | None = None

    def __post_init__(self):
        parts = urllib.parse.urlsplit(self.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise JudgeError(f"judge base URL {_shown_url(self.base_url)!r} is not an http(s) URL with a host")
        if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
            logger.warning("judge endpoint %s is not https: the API key and the answers would cross the network "
                           "unencrypted", _shown_url(self.base_url))

    def redact(self, text: str) -> str:
        """`text` with the API key (and any credentials in the base URL) blanked out, on one line."""
        text = _one_line(text)
        for secret in (self.api_key, urllib.parse.urlsplit(self.base_url).password):
            if secret:
                text = text.replace(secret, "***")
        return text

    @classmethod
    def from_env(cls, model: str | None = None, cache_path: str | None = None) -> JudgeConfig | None:
        """From ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` (or ``OPENAI_API_BASE``) and ``MLLM_JUDGE_MODEL``;
        None when neither a key nor a base URL is set (judging then stays off)."""
        key = os.environ.get("OPENAI_API_KEY")
        base = os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
        if not key and not base:
            return None
        return cls(base_url=base or DEFAULT_BASE_URL, api_key=key,
                   model=model or os.environ.get("MLLM_JUDGE_MODEL"), cache_path=cache_path)


class JudgeClient:
    """``complete(messages, model, temperature, max_tokens, salt) -> (content, model_name)`` with caching."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self._opener = urllib.request.build_opener(_RefuseRedirects)  # the key must not follow a redirect
        self._cache: dict[str, dict] = {}
        if config.cache_path and Path(config.cache_path).exists():
            for line in Path(config.cache_path).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self._cache[rec["key"]] = rec

    def complete(self, messages: list[dict], model: str, temperature: float, max_tokens: int,
                 salt: str = "") -> tuple[str, str]:
        """The reply's content and model name; ``salt`` separates cache entries of repeated identical requests
        (e.g. MM-Vet's independent grading runs)."""
        body = {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        key = hashlib.sha256((salt + json.dumps(body, sort_keys=True, ensure_ascii=False)).encode()).hexdigest()
        if key in self._cache:
            rec = self._cache[key]
            return rec["content"], rec["model"]
        reply = self._post(body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise JudgeError(self.config.redact(
                f"judge reply has no choices[0].message.content: {str(reply)[:300]}")) from e
        content = "" if content is None else str(content)
        rec = {"key": key, "content": content, "model": str(reply.get("model", model))}
        self._cache[key] = rec
        if self.config.cache_path:
            Path(self.config.cache_path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.config.cache_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return rec["content"], rec["model"]

    def _post(self, body: dict) -> dict:
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        data = json.dumps(body).encode("utf-8")
        last = None
        for attempt in range(self.config.max_retries + 1):
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with self._opener.open(req, timeout=self.config.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:300].decode('utf-8', 'replace')}"
                if e.code not in (408, 409, 429) and e.code < 500:
                    break  # a client error will not go away by retrying
            except (urllib.error.URLError, TimeoutError, json.JSONDecodeError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < self.config.max_retries:
                time.sleep(self.config.retry_wait * (2 ** attempt))
        raise JudgeError(self.config.redact(f"judge request to {_shown_url(url)} failed after "
                                            f"{self.config.max_retries + 1} attempts: {last}"))
