"""SIGINT, SIGTERM and SIGHUP: every run ends the same clean way, with exit 130, 143 or 129.

Outside a long job, :func:`install` makes each of the three signals raise
:class:`Interrupted` in the main thread (SIGINT already raises ``KeyboardInterrupt``;
schedulers send SIGTERM and closing terminals SIGHUP, which would otherwise kill the
process with no clean-up at all). Inside a job that must finish what it started (close
a video so it plays, write a checkpoint), :class:`Deferred` turns the signals into a
request the job polls between units of work; later signals only count, so a second
Ctrl-C cannot break the clean-up that keeps the user's work.

A signal that is ignored when a command starts (``nohup`` ignores SIGHUP; so do some
service managers and ``setsid`` wrappers) stays ignored: neither function replaces
``SIG_IGN`` unless this module set it itself (:func:`ignore_further`).
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_TRUNCATED = 3  # finished, but the input ended before the frames it announced


class Interrupted(KeyboardInterrupt):
    """A run stopped by ``signum``; ``exit_code`` is 128 + signum by convention."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        """``SIGINT``, ``SIGTERM`` or ``SIGHUP``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(exc: BaseException) -> int:
    """128 + the signal number of an interrupt (a plain ``KeyboardInterrupt`` is SIGINT)."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


_IGNORED_BY_US: set[int] = set()  # signals ignore_further() set to SIG_IGN (may be handled again)


def handled() -> tuple[signal.Signals, ...]:
    """The signals this process may take over: those not ignored by whoever started it."""
    return tuple(sig for sig in SIGNALS
                 if signal.getsignal(sig) is not signal.SIG_IGN or sig in _IGNORED_BY_US)


def ignore_further() -> None:
    """Ignore the three signals from now on: the process is ending after one, and a second
    Ctrl-C while it prints its last line or exits must not turn into a traceback."""
    if _main_thread():
        for sig in handled():
            signal.signal(sig, signal.SIG_IGN)
            _IGNORED_BY_US.add(sig)


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (main thread only), except
    those the process was started with ignored."""
    if _main_thread():
        for sig in handled():
            signal.signal(sig, _raise)


class Deferred:
    """While active, the three signals set :attr:`signum` (the first one) instead of raising;
    a signal the process was started with ignored stays ignored.

    Poll :attr:`requested` between units of work, or wait on :attr:`event` from another
    thread; :meth:`check` raises :class:`Interrupted` if a signal came. Leaving the
    context restores the previous handlers, unless a signal came: then the process is
    ending, and later signals stay ignored until it has. Outside the main thread it does
    nothing (Python delivers signals to the main thread only).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.event = threading.Event()
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            self.event.set()

    @property
    def requested(self) -> bool:
        """Whether a signal asked the job to stop."""
        return self.signum is not None

    def check(self) -> None:
        """Raise :class:`Interrupted` for the first signal received, if any."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def __enter__(self) -> "Deferred":
        if _main_thread():
            for sig in handled():
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.signum is not None:
            ignore_further()
        else:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        self._previous.clear()
