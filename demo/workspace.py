"""A private folder for one demo process, removed when the process ends, SIGTERM included.

It holds gradio's cache (uploads, rendered images: `GRADIO_TEMP_DIR` points here while the demo runs), the
example images and each session's files. SIGTERM and SIGHUP become a KeyboardInterrupt in the main thread,
which gradio's launch loop answers by closing the server (its shutdown deletes the files it created), and
then the folder goes. (SIGKILL cannot be caught: the folder is left in the system's temp directory.)
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class DemoWorkspace:
    """`with DemoWorkspace() as path:` a new folder under `parent` (default: $GRADIO_TEMP_DIR, else the temp
    dir), gradio's cache while inside, gone afterwards."""

    def __init__(self, parent: str | os.PathLike | None = None):
        self.parent = parent if parent is not None else os.environ.get("GRADIO_TEMP_DIR") or None
        self.path: Path | None = None
        self._saved_env: str | None = None
        self._saved_handlers: dict = {}

    def __enter__(self) -> Path:
        if self.parent is not None:
            Path(self.parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="llm2clip-llava-demo-", dir=self.parent))
        self._saved_env = os.environ.get("GRADIO_TEMP_DIR")
        os.environ["GRADIO_TEMP_DIR"] = str(self.path)
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._saved_handlers[sig] = signal.signal(sig, _interrupt)
        return self.path

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        self._saved_handlers.clear()
        if self._saved_env is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = self._saved_env
        shutil.rmtree(self.path, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
