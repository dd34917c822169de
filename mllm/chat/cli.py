"""`llm2clip-llava chat`: talk about an image in the terminal, streaming the answers.

Interactive by default; `--question` (repeatable) or questions piped on stdin make it a script step.
Answers go to stdout, everything else (banner, notices, errors) to stderr, so output can be captured.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .api import IMAGE_ASPECT_RATIOS
from .command import add_model_loading_args, load_for_command
from .conversation_file import ConversationFileError, read_conversation, save_conversation
from .images import ImageLoadError, check_image, explain, open_image
from .session import ChatSession, ChatStateError, ImageRef, Note
from .turn import run_turn

SETTING_TYPES = {"temperature": float, "top_p": float, "top_k": int, "max_new_tokens": int,
                 "repetition_penalty": float}
COMMANDS_HELP = """commands:
  /image PATH        use another image (starts a new conversation)
  /noimage           continue without an image (starts a new conversation)
  /reset             forget the conversation, keep the image
  /mode MODE         image preprocessing (image_aspect_ratio): pad, crop or resize
  /save PATH         save the conversation as LLaVA JSON (PATH.json; PATH.zip bundles the image)
  /load PATH         continue a saved conversation (.json or .zip)
  /set NAME VALUE    generation setting: temperature (0 = greedy), top_p, top_k, max_new_tokens, repetition_penalty
  /settings          show the current settings
  /help              this text
  /quit              leave (also Ctrl-D); Ctrl-C stops an answer being generated"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm2clip-llava chat",
        description="Chat about an image with a trained checkpoint, in the terminal. Answers stream as they are "
                    "generated; the prompt uses the template the checkpoint was trained with.",
        epilog=COMMANDS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="checkpoint directory (default: the quickstart checkpoint)")
    parser.add_argument("--image", help="image to talk about (PNG, JPEG, ...); /image PATH changes it later")
    parser.add_argument("--question", "-q", action="append", default=[],
                        help="ask this and exit (repeat for a multi-turn script); questions piped on stdin work too")
    parser.add_argument("--system", help="system prompt (default: the template's own)")
    parser.add_argument("--load", metavar="PATH", help="continue a conversation saved by /save (.json or .zip)")
    parser.add_argument("--image-aspect-ratio", "--mode", choices=IMAGE_ASPECT_RATIOS, dest="image_aspect_ratio",
                        help="image preprocessing, LLaVA's image_aspect_ratio (default: as trained)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest answer (default: a quarter of the model's context window, 512 for 2048); "
                             "an answer never gets more than the room the conversation leaves in the window")
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--no-stream", action="store_true", help="print each answer when it is complete")
    add_model_loading_args(parser)
    return parser


class TerminalChat:
    """The command loop: questions go to the session, lines starting with / are commands."""

    def __init__(self, bot, session: ChatSession, settings, image_aspect_ratio: str | None, stream: bool,
                 out=None, err=None, answer_prefix: str = ""):
        self.bot, self.session, self.settings, self.stream = bot, session, settings, stream
        self.image_aspect_ratio = image_aspect_ratio
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.answer_prefix = answer_prefix
        self.failures = 0

    # ------------------------------------------------------------------ output
    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def _notes_since(self, start: int) -> None:
        self._print_notes(item for item in self.session.items[start:] if isinstance(item, Note))

    def _print_notes(self, notes) -> None:
        for note in notes:
            self.say(("error: " if note.kind == "error" else "") + note.text)

    # ------------------------------------------------------------------ actions
    def load_image(self, path: str | None) -> bool:
        start = len(self.session.items)
        try:
            if path is None:
                self.session.set_image(None, "", "")
            else:
                image, key = open_image(path)
                self.session.set_image(image, path, key, source=path)
        except ImageLoadError as exc:
            self.say("error: " + explain(exc, path))
            return False
        self._notes_since(start)
        return True

    def ask(self, question: str) -> None:
        try:
            exchange = self.session.ask(question)
        except ChatStateError as exc:
            self.say(f"error: {exc}")
            return
        start = len(self.session.items)
        pieces = run_turn(self.bot, self.session, self.settings, self.image_aspect_ratio)
        started = False
        try:
            for piece in pieces:
                if not started:  # notes about this turn (a trimmed history) come before its answer
                    started = self._start_answer(exchange)
                if self.stream:
                    print(piece, end="", file=self.out, flush=True)
        except KeyboardInterrupt:
            self.session.request_stop()
            for _ in pieces:  # drain: the worker ends after the current token
                pass
        if not started:
            self._start_answer(exchange)
        if self.stream:
            print(file=self.out, flush=True)
        else:
            print(self.answer_prefix + exchange.answer, file=self.out, flush=True)
        if exchange.finish == "error":
            self.failures += 1
        self._notes_since(start)

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.say(COMMANDS_HELP)
        elif name == "image":
            if not arg:
                self.say("usage: /image PATH")
            else:
                self.load_image(arg)
        elif name == "noimage":
            self.load_image(None)
        elif name == "reset":
            self.session.reset(keep_image=True)
            self.say("Conversation reset" + (f"; still about {self.session.image.name}." if self.session.image else "."))
        elif name == "mode":
            if arg not in IMAGE_ASPECT_RATIOS:
                now = self.image_aspect_ratio or self.bot.image_aspect_ratio
                self.say(f"usage: /mode {'|'.join(IMAGE_ASPECT_RATIOS)} (now {now})")
            else:
                self.image_aspect_ratio = arg
                self.say(f"Image preprocessing: {arg} (the model was trained with {self.bot.image_aspect_ratio}).")
        elif name in ("save", "load"):
            if not arg:
                self.say(f"usage: /{name} PATH (.json or .zip)")
            else:
                (self.save if name == "save" else self.load)(arg)
        elif name == "set":
            self._set(arg)
        elif name == "settings":
            self.say(self.describe_settings())
        else:
            self.say(f"unknown command /{name}; /help lists the commands")
        return True

    def _start_answer(self, exchange) -> bool:
        self._print_notes(exchange.notes)
        if self.stream:
            print(self.answer_prefix, end="", file=self.out, flush=True)
        return True

    def save(self, path: str) -> bool:
        try:
            written = save_conversation(self.session, path)
        except (ConversationFileError, OSError) as exc:
            self.say(f"error: {exc}")
            return False
        self.say(f"Saved the conversation to {written}.")
        return True

    def load(self, path: str) -> bool:
        """Continue the conversation saved in `path`; its image is read like `/image`'s."""
        start = len(self.session.items)
        try:
            saved = read_conversation(path)
            image = None
            if saved.image_source is not None:
                pixels, key = open_image(saved.image_source)
                source = str(saved.image_path) if saved.image_path is not None else None
                image = ImageRef(pixels, source or saved.image_name, key, source=source)
            self.session.restore(saved.exchanges, image, saved.system, label=path)
        except ConversationFileError as exc:
            self.say(f"error: {exc}")
            return False
        except ImageLoadError as exc:
            self.say("error: " + explain(exc, saved.image_name))
            return False
        self._notes_since(start)
        return True

    def _set(self, arg: str) -> None:
        key, _, value = arg.partition(" ")
        key = key.replace("-", "_")
        if key not in SETTING_TYPES or not value.strip():
            self.say(f"usage: /set NAME VALUE with NAME one of {', '.join(SETTING_TYPES)}")
            return
        try:
            self.settings = self.bot.settings(self.settings, **{key: SETTING_TYPES[key](value.strip())})
        except (TypeError, ValueError) as exc:
            self.say(f"error: {exc}")
            return
        self.say(self.describe_settings())

    def describe_settings(self) -> str:
        values = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.settings).items())
        return f"{values}; image preprocessing {self.image_aspect_ratio or self.bot.image_aspect_ratio}"

    # ------------------------------------------------------------------ loop
    def run(self, lines) -> None:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
            else:
                self.ask(line)


def _interactive_lines(prompt: str):
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            yield input(prompt)
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return


def banner(info: dict) -> str:
    quant = info["quantization"] + (f", {info['adapter']}" if info["adapter"] else "")
    external = "".join(f"\n  base {what}: {ref}" for what, ref in info.get("external", {}).items())
    return (f"model {info['model']}\n  LLM {info['llm']} | tower {info['tower']} | quantisation {quant} | "
            f"{info['dtype']} on {info['device']} | template {info['template']} | image {info['image_aspect_ratio']} "
            f"{info['image_size']}px{external}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.image:
        check_image(args.image)  # before the model loads: a bad image is one line, exit 2
    if args.load:
        saved = read_conversation(args.load)  # likewise a conversation file that cannot be continued
        if saved.image_path is not None:
            check_image(saved.image_path)
    bot, code = load_for_command("llm2clip-llava chat", args, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                 repetition_penalty=args.repetition_penalty)
    if bot is None:
        return code
    settings = bot.default_settings
    session = ChatSession(system=args.system)
    chat = TerminalChat(bot, session, settings, args.image_aspect_ratio, stream=not args.no_stream)
    chat.say(banner(bot.info()))
    if args.image and not chat.load_image(args.image):
        return 1
    if args.load and not chat.load(args.load):
        return 1
    if args.question:
        chat.run(args.question)
    elif sys.stdin.isatty():
        chat.answer_prefix = "ASSISTANT: "
        chat.say("Type a question, or /help for commands.")
        chat.run(_interactive_lines("USER: "))
    else:
        chat.run(sys.stdin)
    return 1 if chat.failures else 0


if __name__ == "__main__":
    sys.exit(main())
