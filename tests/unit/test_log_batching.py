"""The batched log handler: lines reach the stream without a write per
record, yet none is lost or held long."""
from __future__ import annotations

import io
import logging

from core.app.local_system import wait_for
from core.log_batching import BatchedStreamHandler


class _CountingStream(io.StringIO):
    """What reached the stream: text is only 'written' once flushed."""

    def __init__(self):
        super().__init__()
        self.flushed = ""

    def flush(self):
        self.flushed = self.getvalue()


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"tests.log_batching.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def test_lines_arrive_within_the_interval():
    stream = _CountingStream()
    handler = BatchedStreamHandler(stream, flush_interval_s=0.05)
    try:
        _logger("timed", handler).info("GET /jobs/abc 200")
        wait_for(lambda: "GET /jobs/abc 200" in stream.flushed, 10, "the timed flush")
    finally:
        handler.close()


def test_a_warning_is_written_at_once_with_the_lines_before_it():
    stream = _CountingStream()
    handler = BatchedStreamHandler(stream, flush_interval_s=3600)
    try:
        logger = _logger("warning", handler)
        logger.info("held")
        assert "held" not in stream.flushed
        logger.warning("the store is unavailable")
        assert "held\nthe store is unavailable\n" in stream.flushed
    finally:
        handler.close()


def test_closing_flushes_what_is_held():
    stream = _CountingStream()
    handler = BatchedStreamHandler(stream, flush_interval_s=3600)
    _logger("close", handler).info("last words")
    assert "last words" not in stream.flushed
    handler.close()
    assert "last words" in stream.flushed
