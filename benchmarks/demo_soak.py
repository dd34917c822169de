"""Soak the demo: N concurrent sessions x M turns through gradio_client on loopback, hostile uploads mixed in.

Starts `llm2clip-llava demo` (the real command, default: the quickstart model) on a free loopback port, then
runs `--sessions` clients at once. Each session asks `--turns` questions about a good image (the first with
the image attached, the rest as follow-ups) and, before every `--hostile-every`-th turn, sends one hostile
upload: tiny files of huge pixel counts (1-bit 8000x8000, 16-bit and RGBA just under the pixel cap), a
truncated PNG, random bytes, an EPS file, an empty file, text. A hostile upload must come back explained
("Cannot use ...") or loaded, and the session must go on. Everything is bounded in time (`--duration`, a
timeout per request).

Reports failed requests (client errors, timeouts, a turn without an answer, an upload without an
explanation), latency percentiles per request kind, and the server's memory from /proc (Linux): RSS after
warm-up, peak RSS (VmHWM) and RSS at the end. JSON goes to benchmarks/results/demo_soak.json. Not a test:
no bar on speed; `--rss-bound-mb` states the memory bound the run is checked against (exit 1 when exceeded
or when any request failed).

    python benchmarks/demo_soak.py                              # quickstart model, 8 sessions x 5 turns
    python benchmarks/demo_soak.py --model runs/finetune --sessions 16 --turns 8 -- --concurrency 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "demo_soak.json"


# ---------------------------------------------------------------------- inputs
def write_inputs(directory: Path, max_pixels: int) -> tuple[Path, dict[str, Path]]:
    """(a good image, {name: hostile file}); the pixel-heavy files are a few kB on disk."""
    from PIL import Image

    good = directory / "good.png"
    image = Image.new("RGB", (320, 240), (250, 250, 250))
    image.paste((220, 30, 30), (40, 60, 160, 180))
    image.save(good)
    side = int((max_pixels * 0.95) ** 0.5)  # just under the demo's cap: decoded in full, then reduced
    hostile = {
        "bomb-1bit-8000x8000.png": lambda p: Image.new("1", (8000, 8000)).save(p),
        "gray16-under-cap.png": lambda p: Image.new("I;16", (side, side), 40000).save(p),
        "rgba-under-cap.png": lambda p: Image.new("RGBA", (side, side), (10, 200, 10, 90)).save(p),
        "1bit-under-cap.png": lambda p: Image.new("1", (side, side), 1).save(p),
        "truncated.png": lambda p: p.write_bytes(good.read_bytes()[:300]),
        "random-bytes.png": lambda p: p.write_bytes(random.Random(0).randbytes(4096)),
        "picture.eps": lambda p: p.write_bytes(_eps()),
        "empty.png": lambda p: p.write_bytes(b""),
        "notes.txt": lambda p: p.write_text("not an image"),
        "chunk-bomb.png": lambda p: p.write_bytes(_png_with_huge_chunk()),
    }
    paths = {}
    for name, make in hostile.items():
        paths[name] = directory / name
        make(paths[name])
    return good, paths


def _eps() -> bytes:
    """An EPS file: PIL hands these to Ghostscript when it is installed."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
            b"newpath 10 10 moveto 90 90 lineto stroke\nshowpage\n%%EOF\n")


def _png_with_huge_chunk() -> bytes:
    """A 1x1 PNG whose header claims 60000x60000: refused from its header, never decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str | None, port: int, extra: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "mllm.cli", "demo", "--port", str(port), "--temperature", "0",
            *(["--model", model] if model else []), *extra]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the demo exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the demo did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of a process in MB, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


# ---------------------------------------------------------------------- sessions
class Recorder:
    """Latencies per request kind and failures, shared by the session threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {}
        self.failures: list[str] = []
        self.counts: dict[str, int] = {}
        self.uploads = 0

    def next_hostile(self, hostile: list[Path]) -> Path:
        """Each hostile file in turn across all sessions, so every kind is exercised."""
        with self.lock:
            self.uploads += 1
            return hostile[(self.uploads - 1) % len(hostile)]

    def count(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def call(self, kind: str, fn, timeout: float):
        start = time.monotonic()
        try:
            result = fn().result(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - every client-side failure is a failed request
            self.fail(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        with self.lock:
            self.latency.setdefault(kind, []).append(time.monotonic() - start)
        return result

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message[:300])


def _texts(chat) -> list[str]:
    return [part.get("text", "[image]") for message in chat or [] for part in message["content"]]


def run_session(index: int, url: str, good: Path, hostile: list[Path], args, deadline: float, rec: Recorder):
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False, download_files=False)
    except Exception as exc:  # noqa: BLE001
        rec.fail(f"session {index}: cannot connect: {type(exc).__name__}: {exc}")
        return
    suffix = "\nAnswer the question using a single word or phrase."  # the quickstart's training wording
    questions = [q + suffix for q in ("What color is the object?", "What shape is the object?",
                                      "Is the object on the left or the right side of the image?")]

    def send(text, path=None):
        files = [handle_file(str(path))] if path is not None else []
        return rec.call("send", lambda: client.submit({"text": text, "files": files}, "pad", [], api_name="/send"),
                        args.request_timeout)

    for turn in range(args.turns):
        if time.monotonic() > deadline:
            rec.fail(f"session {index}: out of time at turn {turn}")
            return
        if hostile and (index + turn) % args.hostile_every == 0:
            path = rec.next_hostile(hostile)
            result = send("What is in this file?", path)
            rec.count("hostile uploads")
            if result is not None:
                texts = _texts(result[0])
                explained = [t for t in texts if t.startswith(f"⚠️ Cannot use {path.name}") or
                             (f"{path.name} (" in t and "loaded" in t) or f"New image {path.name}" in t]
                if not explained:
                    rec.fail(f"session {index}: upload {path.name} got no explanation: {texts[-3:]}")
                elif "loaded" in explained[-1] or "New image" in explained[-1]:
                    rec.count("hostile uploads accepted (decoded, reduced)")
                    generated = rec.call("generate", lambda: client.submit("pad", 0.0, 0.7, args.max_new_tokens,
                                                                           api_name="/generate"), args.request_timeout)
                    rec.count("turns")
                    if generated is not None:
                        _check_answer(rec, generated[0], "What is in this file?", f"session {index} ({path.name})")
        question = questions[turn % len(questions)]
        attach = good if turn == 0 or (index + turn) % args.hostile_every == 0 else None
        start = time.monotonic()
        result = send(question, attach)
        if result is None:
            continue
        generated = rec.call("generate", lambda: client.submit("pad", 0.0, 0.7, args.max_new_tokens,
                                                               api_name="/generate"), args.request_timeout)
        rec.count("turns")
        if generated is None:
            continue
        with rec.lock:
            rec.latency.setdefault("turn (send + answer)", []).append(time.monotonic() - start)
        texts = _texts(generated[0])
        _check_answer(rec, generated[0], question, f"session {index} turn {turn}")
        if any("context window" in t for t in texts):
            rec.count("context notices")
        if any(t.startswith("⚠️") and "Cannot use" not in t for t in texts):
            rec.fail(f"session {index} turn {turn}: error in the chat: {[t for t in texts if t.startswith('⚠️')][-1]}")


def _check_answer(rec: Recorder, chat, question: str, where: str) -> None:
    """A finished turn has an answer, or the chat's note that the model returned none (a completed request:
    counted, not failed); anything else failed."""
    texts = _texts(chat)
    if question not in texts:
        rec.fail(f"{where}: the question is not in the chat: {texts[-3:]}")
        return
    after = texts[len(texts) - texts[::-1].index(question):]
    if any(t.strip() and not t.startswith(("ℹ️", "⚠️")) for t in after):
        rec.count("answers")
    elif "ℹ️ The model returned an empty answer." in after:
        rec.count("empty answers (the model's choice)")
    else:
        rec.fail(f"{where}: no answer: {after}")


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q):
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(values), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(ordered[-1], 3),
            "mean": round(statistics.fmean(values), 3)}


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="arguments after -- go to `llm2clip-llava demo`")
    parser.add_argument("--model", help="checkpoint (default: the quickstart model)")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--hostile-every", type=int, default=2, help="a hostile upload before every k-th turn")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--duration", type=float, default=900, help="seconds the sessions may take in all")
    parser.add_argument("--request-timeout", type=float, default=300)
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument("--max-image-pixels", type=int, default=24_000_000, help="passed to the demo")
    parser.add_argument("--rss-bound-mb", type=float, default=None,
                        help="peak RSS growth over the RSS after warm-up allowed (default: 300 MB + "
                             "upload-concurrency x --max-image-pixels x 24 bytes, the cost of decoding the "
                             "most expensive image kind, a 16-bit greyscale PNG)")
    parser.add_argument("--upload-concurrency", type=int, default=1, help="passed to the demo")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bound = args.rss_bound_mb or 300 + args.upload_concurrency * args.max_image_pixels * 24 / 2 ** 20

    work = Path(tempfile.mkdtemp(prefix="demo-soak-"))
    good, hostile = write_inputs(work, args.max_image_pixels)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = work / "demo.log"
    server_args = ["--max-image-pixels", str(args.max_image_pixels), "--upload-concurrency",
                   str(args.upload_concurrency), "--max-new-tokens", str(args.max_new_tokens), *extra]
    proc = start_server(args.model, port, server_args, log_path)
    print(f"demo on {url} (log {log_path}); {args.sessions} sessions x {args.turns} turns", flush=True)
    try:
        wait_ready(proc, url, args.startup_timeout, log_path)
        warm = Recorder()
        run_session(0, url, good, [], argparse.Namespace(**{**vars(args), "turns": 1}),
                    time.monotonic() + args.request_timeout, warm)  # imports and first allocations
        if warm.failures:
            raise SystemExit(f"warm-up failed: {warm.failures}\n{log_path.read_text()[-3000:]}")
        base_rss, _ = memory_mb(proc.pid)
        rec = Recorder()
        peak_sampled = [base_rss]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.05):
                try:
                    peak_sampled.append(memory_mb(proc.pid)[0])
                except OSError:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = time.monotonic() + args.duration
        start = time.monotonic()
        threads = [threading.Thread(target=run_session, args=(i, url, good, list(hostile.values()), args, deadline, rec))
                   for i in range(args.sessions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(1.0, deadline - time.monotonic()) + args.request_timeout)
        wall = time.monotonic() - start
        stop.set()
        end_rss, peak = memory_mb(proc.pid)
        alive = proc.poll() is None
        if not alive:
            rec.fail(f"the server died with {proc.returncode}")
        if any(thread.is_alive() for thread in threads):
            rec.fail("sessions still running after the deadline")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    growth = peak - base_rss
    report = {
        "benchmark": "demo_soak",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "demo_args": server_args,
        "hostile_files": {name: path.stat().st_size for name, path in hostile.items()},
        "wall_s": round(wall, 1),
        "requests_failed": len(rec.failures),
        "failures": rec.failures[:50],
        "counts": rec.counts,
        "latency_s": {kind: percentiles(values) for kind, values in rec.latency.items()},
        "memory_mb": {"rss_after_warmup": round(base_rss, 1), "peak_rss": round(peak, 1),
                      "peak_growth": round(growth, 1), "peak_sampled": round(max(peak_sampled), 1),
                      "rss_at_end": round(end_rss, 1), "bound_growth": round(bound, 1)},
        "within_bound": growth <= bound,
        "server_exit_after_sigterm": proc.returncode,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "commit": _commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("requests_failed", "counts", "latency_s", "memory_mb", "within_bound")},
                     indent=2))
    print(f"wrote {args.out}")
    return 0 if not rec.failures and report["within_bound"] else 1


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
