"""Where live frames go: an OpenCV window, or a headless terminal readout of live stats.

Creating a window without a usable display makes OpenCV's Qt backend abort the whole
process (no exception to catch), so :func:`display_problem` checks first: on Linux an
unset ``$DISPLAY``/``$WAYLAND_DISPLAY`` means headless, and otherwise a throw-away child
process must manage to open a window before this process tries.
"""
from __future__ import annotations

import os
import queue
import select
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.text import Text

_PROBE = (
    "import cv2\n"
    "cv2.namedWindow('rtlrp display probe', cv2.WINDOW_NORMAL)\n"
    "cv2.destroyAllWindows()\n"
)


@dataclass
class LiveStats:
    """What the live loop reports each frame."""

    source: str
    fps: float = 0.0
    frames: int = 0
    skipped: int = 0
    label: str = ""
    top_k: float = 0.0
    cmap: str = ""
    layout: str = ""
    device: str = ""
    paused: bool = False
    recording: str | None = None


class Display(Protocol):
    """A place to show rendered frames and read keys from; ``interactive`` if it has keys."""

    closed: bool
    interactive: bool

    def show(self, frame: np.ndarray, stats: LiveStats) -> None: ...

    def poll_key(self, wait_ms: int = 1) -> int | None: ...

    def close(self) -> None: ...


def display_problem(timeout: float = 20.0) -> str | None:
    """Why no window can be opened here, or ``None`` if one can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display found ($DISPLAY and $WAYLAND_DISPLAY are unset)"
    import cv2

    if cv2.currentUIFramework() in ("", "NONE"):
        return "this OpenCV build has no GUI support (is opencv-python-headless installed?)"
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"opening a test window took longer than {timeout:.0f} s"
    if probe.returncode != 0:
        lines = [ln.strip() for ln in probe.stderr.splitlines() if ln.strip()]
        where = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or "the display"
        detail = f": {lines[0]}" if lines else ""
        return f"cannot open a window on {where}{detail}"
    return None


class WindowDisplay:
    """An OpenCV window sized to fit ``max_size`` and magnify small frames; closing it sets ``closed``.

    ``WND_PROP_VISIBLE`` reads -1 on some backends before the window appears (GTK3,
    opencv#25346), so a window counts as closed only after it has been seen open.
    """

    def __init__(self, title: str = "rtlrp", max_size: tuple[int, int] = (1600, 900), min_side: int = 480) -> None:
        import cv2

        os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")  # Qt's font warnings are noise
        self._cv2 = cv2
        self.title = title
        self.max_size = max_size
        self.min_side = min_side
        self.closed = False
        self.interactive = True
        self._seen_open = False
        self._size: tuple[int, int] | None = None
        cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)

    def show(self, frame: np.ndarray, stats: LiveStats) -> None:
        """Show ``frame`` (the stats are drawn on it already); resize the window on a new size."""
        if self.closed:
            return
        h, w = frame.shape[:2]
        if self._size != (w, h):
            self._size = (w, h)
            grow = max(1.0, self.min_side / min(w, h))  # small frames (a 256 px demo) are magnified
            fit = min(grow, self.max_size[0] / w, self.max_size[1] / h)
            self._cv2.resizeWindow(self.title, max(1, int(w * fit)), max(1, int(h * fit)))
        self._cv2.imshow(self.title, frame)

    def poll_key(self, wait_ms: int = 1) -> int | None:
        """Pump window events for ``wait_ms``; the key pressed, if any. Notices a closed window."""
        if self.closed:
            return None
        key = self._cv2.waitKey(max(1, wait_ms))
        try:
            visible = self._cv2.getWindowProperty(self.title, self._cv2.WND_PROP_VISIBLE)
        except self._cv2.error:
            visible = -1.0
        if visible >= 1:
            self._seen_open = True
        elif self._seen_open:
            self.closed = True
        return None if key < 0 else key & 0xFF

    def close(self) -> None:
        """Destroy the window (if the user has not already closed it)."""
        try:
            self._cv2.destroyWindow(self.title)
            self._cv2.waitKey(1)
        except self._cv2.error:
            pass
        self.closed = True


def stats_text(stats: LiveStats) -> Text:
    """One styled line of live stats, as the headless display prints it."""
    text = Text()
    state = ("PAUSED", "bold yellow") if stats.paused else ("LIVE", "bold green")
    text.append(f"{state[0]:6s} ", style=state[1])
    text.append(f"{stats.fps:6.1f} FPS", style="bold cyan")
    text.append(f"  frames {stats.frames}  skipped {stats.skipped}")
    if stats.label:
        text.append("  ")
        text.append(stats.label, style="bold")
    text.append(f"  top-k {stats.top_k:g}  cmap {stats.cmap}  layout {stats.layout}", style="dim")
    if stats.device:
        text.append(f"  {stats.device}", style="dim")
    if stats.recording:
        text.append(f"  REC {stats.recording}", style="bold red")
    return text


def _key_source(stream: object) -> int | None:
    """The file descriptor of ``stream`` if it is a terminal or a pipe (not /dev/null, a file or closed)."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return None
    return fd if os.isatty(fd) or stat.S_ISFIFO(mode) else None


class StdinKeys:
    """Lines typed on stdin, read by a daemon thread: ``q`` (or ``quit``) and Enter is the key q.

    Only a terminal or a pipe is read; a terminal only while this process is in its foreground,
    so a run started with ``&`` is not stopped by SIGTTIN.
    """

    def __init__(self, stream: object | None = None) -> None:
        self._keys: queue.SimpleQueue[int] = queue.SimpleQueue()
        fd = _key_source(sys.stdin if stream is None else stream)
        self.active = fd is not None
        self._stop = threading.Event()
        if fd is not None:
            identity = os.fstat(fd)[1:3]  # (inode, device) now: once the thread runs, the number may be reused
            threading.Thread(target=self._read, args=(fd, identity), name="rtlrp-stdin-keys", daemon=True).start()

    def stop(self) -> None:
        """Stop reading (the display closed): the thread ends within half a second."""
        self._stop.set()

    def _read(self, fd: int, identity: tuple[int, int]) -> None:
        tty, pending = os.isatty(fd), b""
        while not self._stop.is_set():
            try:
                if not select.select([fd], [], [], 0.5)[0] or (tty and os.tcgetpgrp(fd) != os.getpgrp()):
                    continue
                if self._stop.is_set() or os.fstat(fd)[1:3] != identity:
                    return
                chunk = os.read(fd, 256)
            except OSError:
                return
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            if any(line.strip().lower() in (b"q", b"quit") for line in lines):
                self._keys.put(ord("q"))

    def poll(self) -> int | None:
        """The next key typed, if any."""
        try:
            return self._keys.get_nowait()
        except queue.Empty:
            return None


class HeadlessDisplay:
    """No window: live stats in the terminal (one updating line), or a line every ``interval`` s in a log;
    with ``keys``, q and Enter on stdin quit."""

    closed = False
    interactive = False

    def __init__(self, console: Console | None = None, interval: float = 2.0, keys: StdinKeys | None = None) -> None:
        self.console = console or Console()
        self.interval = interval
        self.keys = keys
        self._live: Live | None = None
        self._last_print = -float("inf")

    def show(self, frame: np.ndarray, stats: LiveStats) -> None:
        """Report ``stats``; the frame itself goes nowhere."""
        if self.console.is_terminal:
            if self._live is None:
                self._live = Live(stats_text(stats), console=self.console, refresh_per_second=4, transient=False)
                self._live.start()
            else:
                self._live.update(stats_text(stats))
            return
        now = time.monotonic()
        if now - self._last_print >= self.interval:
            self._last_print = now
            self.console.print(stats_text(stats), soft_wrap=True)

    def poll_key(self, wait_ms: int = 1) -> int | None:
        """q once a line ``q`` was typed on stdin (with ``keys``), else None; Ctrl-C stops the program too."""
        return self.keys.poll() if self.keys is not None else None

    def close(self) -> None:
        """Leave the last stats line on screen; stop reading stdin."""
        if self.keys is not None:
            self.keys.stop()
        if self._live is not None:
            self._live.stop()
            self._live = None


def open_display(title: str, window: bool, console: Console, notice: Callable[[str], None]) -> Display:
    """A window if ``window`` and one can be opened here; otherwise headless, saying why."""
    if window:
        problem = display_problem()
        if problem is None:
            return WindowDisplay(title)
        notice(f"{problem}: running headless with live stats in the terminal")
    keys = StdinKeys()
    if keys.active:
        console.print("headless: type q and Enter to stop (or Ctrl-C)")
    return HeadlessDisplay(console, keys=keys)
