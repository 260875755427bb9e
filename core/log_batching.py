"""A log handler that writes in batches, for processes that log a line per
request (the API).

A write to stderr is a system call, and Python hands the GIL to another
thread around it: under load, one write per request made the API's threads
take turns far more often than their work needed. Records gather in a
buffer instead and reach the stream every FLUSH_INTERVAL_S, at once for
warnings and above, and at exit.
"""
from __future__ import annotations

import logging
import sys
import threading

FLUSH_INTERVAL_S = 0.2
_BUFFER_BYTES = 256 * 1024


class BatchedStreamHandler(logging.StreamHandler):
    """StreamHandler that flushes on a timer (and for WARNING and above), not per record."""

    def __init__(self, stream, flush_interval_s: float = FLUSH_INTERVAL_S):
        super().__init__(stream)
        self._stopped = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every, args=(flush_interval_s,),
                                         name="log-flush", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        # StreamHandler.emit without its flush for every record.
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()

    def _flush_every(self, interval_s: float) -> None:
        while not self._stopped.wait(interval_s):
            self.flush()


def log_to_stderr_in_batches(level: int, fmt: str) -> None:
    """Configure the root logger like logging.basicConfig(level, format=fmt),
    writing to stderr through a BatchedStreamHandler."""
    # stderr is line-buffered (one write per line); the handler gets its own
    # block-buffered writer on the same file descriptor.
    try:
        stream = open(sys.stderr.fileno(), "w", buffering=_BUFFER_BYTES, encoding="utf-8",
                      errors="backslashreplace", closefd=False)
    except (AttributeError, OSError, ValueError):  # no file descriptor: as it is
        stream = sys.stderr
    logging.basicConfig(level=level, format=fmt, handlers=[BatchedStreamHandler(stream)])
    # Fields no format of this project shows, so not worth looking up for
    # every record (the logging HOWTO's "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
