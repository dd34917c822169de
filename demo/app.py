"""`llm2clip-llava demo`: the Gradio chat demo in one process (model, queue and web server together).

Binds 127.0.0.1 unless `--host` says otherwise; a public share link only with `--share`.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import shutil
import sys
import tempfile

from mllm.chat.api import IMAGE_MODES, add_model_loading_args
from mllm.checks import OptionError


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
    parser.add_argument("--concurrency", type=int, default=4,
                        help="answers generated at the same time; further requests wait in the queue (default 4)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait (default 64)")
    parser.add_argument("--temperature", type=float, default=0.2, help="initial temperature (0 = greedy; default 0.2)")
    parser.add_argument("--top-p", type=float, default=0.7, help="initial top-p (default 0.7)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="initial max new tokens (default 512)")
    parser.add_argument("--image-mode", choices=IMAGE_MODES, default=None,
                        help="initial image preprocessing (default: the mode the model was trained with)")
    parser.add_argument("--max-file-size", default="50mb", help="largest upload accepted (default 50mb)")
    add_model_loading_args(parser)
    parser.add_argument("--examples-dir", default=None, help="where to draw the example images (default: a temp dir)")
    return parser


def check_options(args) -> None:
    """Everything about the flags that can be wrong, checked before the model loads (`UserError`: one line, exit 2)."""
    from mllm import checks

    checks.at_least("--concurrency", args.concurrency, 1)
    checks.at_least("--max-queue", args.max_queue, 1)
    if not re.fullmatch(r"\s*\d+\s*(b|kb|mb|gb|tb)\s*", args.max_file_size, flags=re.IGNORECASE):
        raise checks.OptionError(f"--max-file-size {args.max_file_size!r} is not a size like 50mb, 2gb or 1000000b")
    checks.port(args.port)
    if args.examples_dir is not None:
        checks.output_dir(args.examples_dir, "--examples-dir")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_options(args)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a local demo
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from mllm.chat.api import load_for_command

    bot, code = load_for_command("llm2clip-llava demo", args, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_p=args.top_p)
    if bot is None:
        return code
    settings = bot.default_settings

    from .examples import make_examples
    from .handlers import DemoBackend
    from .ui import CSS, build_demo, theme

    examples_dir = args.examples_dir
    if examples_dir is None:
        examples_dir = tempfile.mkdtemp(prefix="llm2clip-llava-demo-")
        atexit.register(shutil.rmtree, examples_dir, ignore_errors=True)
    examples = make_examples(examples_dir)
    demo = build_demo(DemoBackend(bot, settings), examples, image_mode=args.image_mode)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    info = bot.info()
    print(f"llm2clip-llava demo: {info['model']} (tower {info['tower']}, quantisation {info['quantization']}) "
          f"on http://{args.host}:{args.port}", flush=True)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                    max_file_size=args.max_file_size, theme=theme(), css=CSS, ssr_mode=False, quiet=False)
    except OSError as exc:  # the port is taken, or the host is not an address of this machine
        raise OptionError(f"cannot serve on {args.host}:{args.port}: {exc}") from exc
    return 0


if __name__ == "__main__":
    sys.exit(main())
