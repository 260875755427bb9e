"""Shared fixtures.

The JobStore and Queue contract suites run once per backend in BACKENDS.
Each entry builds only its own backend, in the test's tmp_path; another
backend (SQS, SimpleDB, ...) is added as one more class and one more key.
A test that needs another process to open the same backend passes it
`backend.recipe()` (plain JSON) and the child, started with the
`spawn_python` fixture, calls `open_backend(recipe)`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.sqlite_queue import SQLiteQueue
from core.sqlite_store import SQLiteJobStore

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_DIR = TESTS_DIR.parent


class SQLiteBackend:
    """The embedded backend: the store and every queue in one SQLite file."""

    # Short enough for fast tests, long enough to outlast a slow CI step.
    short_visibility_s = 0.4

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, "nommer.sqlite3")

    def recipe(self) -> dict:
        return {"backend": "sqlite", "workdir": self.workdir}

    def store(self) -> SQLiteJobStore:
        return SQLiteJobStore(self.path)

    def queue(self, name: str, **options) -> SQLiteQueue:
        return SQLiteQueue(self.path, name, **options)

    def close(self) -> None:
        pass


BACKENDS = {"sqlite": SQLiteBackend}


def open_backend(recipe: dict):
    """The backend a `recipe()` describes, for use in a child process."""
    return BACKENDS[recipe["backend"]](recipe["workdir"])


def _start_python(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_DIR), str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=str(PROJECT_DIR),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def spawn_python():
    """`spawn_python(code, *args)` starts `python -c code args...` with the
    project and tests/ importable, stdin/stdout/stderr as text pipes.
    Any child still running at teardown is killed."""
    started: list[subprocess.Popen] = []

    def spawn(code: str, *args: str) -> subprocess.Popen:
        proc = _start_python(code, *args)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    built = BACKENDS[request.param](str(tmp_path))
    yield built
    built.close()


@pytest.fixture
def store(backend):
    built = backend.store()
    yield built
    built.close()


class QueueFactory:
    """`factory(name, visibility_timeout_s=..., dead_letter_after=...)` opens the
    queue `name` of this test's backend; every queue opened is closed at teardown."""

    def __init__(self, backend):
        self.backend = backend
        self._opened = []

    def __call__(self, name: str, visibility_timeout_s: float = 60,
                 dead_letter_after: int = 6):
        queue = self.backend.queue(name, visibility_timeout_s=visibility_timeout_s,
                                   dead_letter_after=dead_letter_after)
        self._opened.append(queue)
        return queue

    def close(self) -> None:
        for queue in self._opened:
            queue.close()


@pytest.fixture
def queue_factory(backend):
    factory = QueueFactory(backend)
    yield factory
    factory.close()
