"""`llm2clip-llava demo`: the Gradio chat demo in one process (model, queue and web server together).

Binds 127.0.0.1 unless `--host` says otherwise; a public share link only with `--share`; a login with `--auth`
or `--auth-file`. Everything it writes (uploads, examples, session files) lives in a private temp folder that is
removed when it stops, on Ctrl-C, SIGTERM or a normal exit (`demo.workspace`).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from mllm import checks
from mllm.chat.api import IMAGE_ASPECT_RATIOS
from mllm.chat.command import add_model_loading_args, load_for_command
from mllm.checks import OptionError

from .examples import make_examples
from .handlers import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_SESSION_TTL, DemoBackend
from .workspace import DemoWorkspace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm2clip-llava demo",
        description="Serve the chat demo in the browser: upload or paste an image, ask, watch the answer stream.",
    )
    parser.add_argument("--model", help="checkpoint directory (default: the quickstart checkpoint)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="require this login (repeat for several users); visible to other local users in the "
                             "process list, so prefer --auth-file")
    parser.add_argument("--auth-file", metavar="FILE", help="require a login: one USER:PASS per line (# comments)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="answers generated at the same time; further requests wait in the queue (default 4)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait (default 64)")
    parser.add_argument("--upload-concurrency", type=int, default=1,
                        help="messages (and their attachments) decoded at the same time (default 1): with "
                             "--max-image-pixels this bounds the memory decoding takes")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help=f"largest image accepted, in pixels, refused before decoding (default "
                             f"{DEFAULT_MAX_IMAGE_PIXELS:,}, a 6000x4000 photo)")
    parser.add_argument("--max-file-size", default="50mb", help="largest upload accepted (default 50mb)")
    parser.add_argument("--session-ttl", type=float, default=DEFAULT_SESSION_TTL, metavar="SECONDS",
                        help="forget a conversation (and its image) idle this long; uploads are deleted after "
                             "it too (default 3600)")
    parser.add_argument("--max-sessions", type=int, default=200,
                        help="conversations kept in memory; beyond it the least recently used is forgotten "
                             "(default 200)")
    parser.add_argument("--temperature", type=float, default=0.2, help="initial temperature (0 = greedy; default 0.2)")
    parser.add_argument("--top-p", type=float, default=0.7, help="initial top-p (default 0.7)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="initial max new tokens (default: a quarter of the model's context window)")
    parser.add_argument("--image-aspect-ratio", "--image-mode", choices=IMAGE_ASPECT_RATIOS, default=None,
                        dest="image_aspect_ratio",
                        help="initial image preprocessing, LLaVA's image_aspect_ratio (default: as trained)")
    add_model_loading_args(parser)
    parser.add_argument("--examples-dir", default=None,
                        help="where to draw the example images (default: inside the demo's temp folder)")
    return parser


def parse_logins(pairs: list[str], auth_file: str | None) -> list[tuple[str, str]]:
    """USER:PASS pairs from `--auth` and `--auth-file`; a malformed one is a `UserError` (never echoing it)."""
    entries = [(f"--auth #{i + 1}", pair) for i, pair in enumerate(pairs)]
    if auth_file:
        path = Path(auth_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise OptionError(f"cannot read --auth-file {path}: {exc.strerror or exc}") from exc
        entries += [(f"{path} line {n}", line.strip()) for n, line in enumerate(lines, 1)
                    if line.strip() and not line.lstrip().startswith("#")]
        if not any(where.startswith(str(path)) for where, _ in entries):
            raise OptionError(f"--auth-file {path} holds no USER:PASS line")
    logins = []
    for where, pair in entries:
        user, sep, password = pair.partition(":")
        if not sep or not user.strip() or not password:
            raise OptionError(f"{where}: expected USER:PASS with a non-empty user and password")
        logins.append((user.strip(), password))
    return logins


def check_options(args) -> list[tuple[str, str]]:
    """Everything about the flags that can be wrong, checked before the model loads (`UserError`: one line, exit 2).
    Returns the logins."""
    for name in ("concurrency", "max_queue", "upload_concurrency", "max_image_pixels", "max_sessions"):
        checks.at_least(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    if args.session_ttl <= 0:
        raise OptionError(f"--session-ttl must be > 0 seconds, got {args.session_ttl}")
    if not re.fullmatch(r"\s*\d+\s*(b|kb|mb|gb|tb)\s*", args.max_file_size, flags=re.IGNORECASE):
        raise OptionError(f"--max-file-size {args.max_file_size!r} is not a size like 50mb, 2gb or 1000000b")
    checks.port(args.port)
    if args.examples_dir is not None:
        checks.output_dir(args.examples_dir, "--examples-dir")
    return parse_logins(args.auth, args.auth_file)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logins = check_options(args)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a local demo
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    bot, code = load_for_command("llm2clip-llava demo", args, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_p=args.top_p)
    if bot is None:
        return code
    settings = bot.default_settings

    from .ui import CSS, build_demo, public_name, theme  # gradio loads only to serve, not for --help or a bad flag

    with DemoWorkspace() as workspace:
        examples = make_examples(args.examples_dir or workspace / "examples")
        backend = DemoBackend(bot, settings, files_dir=workspace / "sessions", max_image_pixels=args.max_image_pixels,
                              session_ttl=args.session_ttl)
        demo = build_demo(backend, examples, image_aspect_ratio=args.image_aspect_ratio,
                          upload_concurrency=args.upload_concurrency)
        demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
        info = bot.info()
        print(f"llm2clip-llava demo: {public_name(info['model'])} (tower {public_name(info['tower'])}, quantisation "
              f"{info['quantization']}) on http://{args.host}:{args.port}"
              + (f", login required ({len(logins)} user{'s' if len(logins) != 1 else ''})" if logins else ""),
              flush=True)
        if args.host not in ("127.0.0.1", "localhost", "::1") and not logins:
            print("llm2clip-llava demo: warning: reachable from the network without a login; consider --auth-file",
                  file=sys.stderr, flush=True)
        try:
            demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                        max_file_size=args.max_file_size, theme=theme(), css=CSS, ssr_mode=False, quiet=False,
                        auth=logins or None, state_session_capacity=args.max_sessions)
        except OSError as exc:  # the port is taken, or the host is not an address of this machine
            raise OptionError(f"cannot serve on {args.host}:{args.port}: {exc}") from exc
    return 0


if __name__ == "__main__":
    sys.exit(main())
