"""What every long-running process of the project shares: log format, and
a loop run until SIGTERM or SIGINT (the handlers only ask the loop to stop)."""
from __future__ import annotations

import logging
import signal
from collections.abc import Callable

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def run_until_signalled(run: Callable[[], None], request_stop: Callable[[], None]) -> None:
    """Call `run()` with SIGTERM and SIGINT mapped to `request_stop()`; the
    previous handlers are put back when `run` returns."""

    def on_signal(signum, frame):
        request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
