"""How a lab's front end (`make run`, the benchmarks that start a `LabSystem`) stops on a signal.

Ctrl-C, SIGTERM (`kill`, a timeout, a supervisor) and SIGHUP (the terminal closed) all unwind
whatever runs in the main thread, start-up included: `LabSystem` and its companions clean up on any
exception. Without this, SIGTERM and SIGHUP end Python at once, and the services, BIND, Kea and the
lab CMTS, each in a session of its own, keep running.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def unwind_on_stop_signals() -> None:
    """The first of these signals raises KeyboardInterrupt in the main thread; later ones are
    ignored, so they cannot cut the clean-up short."""
    stopping = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    for stop in STOP_SIGNALS:
        signal.signal(stop, interrupt)
