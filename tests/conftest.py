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

from tests.fixtures.aws import moto_server, unique_name  # noqa: F401  (moto_server: a fixture)
from tests.fixtures.simpledb_server import simpledb_server  # noqa: F401  (a fixture)
from core.queues.sqlite import SQLiteQueue
from core.stores.sqlite import SQLiteJobStore

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


class SQSBackend:
    """SQS queues on the test session's moto server; no job store, so the
    store contract skips it. The server is shared by every test, so queue
    names carry a prefix of this backend's own; the backend that made them
    (not a child process's copy) deletes them at close."""

    # SQS visibility timeouts are whole seconds.
    short_visibility_s = 1
    # SQS accepts a superseded receipt handle: AWS documents that a delete
    # with one "might not" delete the message, and moto, matched to AWS on
    # this (getmoto/moto#4655), deletes and extends with it.
    ignores_stale_receipts = False
    # Standard queues deliver at least once: AWS documents that a message may
    # now and then be received twice, and moto's server, answering requests
    # on several threads, does so under load.
    at_most_once_while_hidden = False
    # Fixtures the `backend` fixture passes to the constructor by name.
    servers = ("moto_server",)

    def __init__(self, workdir: str, moto_server=None, endpoint_url: str = "",
                 prefix: str = ""):
        from core.aws import client
        from core.settings import Settings

        self.workdir = workdir
        self.endpoint_url = endpoint_url or moto_server.endpoint_url
        self._owner = not prefix
        self.prefix = prefix or unique_name("q")
        self._client = client(Settings(backend="aws", aws_endpoint_url=self.endpoint_url), "sqs")

    def recipe(self) -> dict:
        return {"backend": "sqs", "workdir": self.workdir,
                "endpoint_url": self.endpoint_url, "prefix": self.prefix}

    def queue(self, name: str, **options):
        from core.queues.sqs import SQSQueue

        return SQSQueue(self._client, f"{self.prefix}-{name}", **options)

    def close(self) -> None:
        if self._owner:
            made = self._client.list_queues(QueueNamePrefix=self.prefix).get("QueueUrls", [])
            for url in made:
                self._client.delete_queue(QueueUrl=url)
        self._client.close()


class SimpleDBBackend:
    """The SimpleDB job store on the session's SimpleDB test server; no queues.
    Domains carry a prefix of this backend's own; the backend that made
    them (not a child process's copy) deletes them at close."""

    servers = ("simpledb_server",)

    def __init__(self, workdir: str, simpledb_server=None, endpoint_url: str = "",
                 prefix: str = ""):
        from core.aws import client
        from core.settings import Settings

        self.workdir = workdir
        self.endpoint_url = endpoint_url or simpledb_server.endpoint_url
        self._owner = not prefix
        self.prefix = prefix or unique_name("sdb")
        self._client = client(Settings(backend="aws", aws_endpoint_url=self.endpoint_url), "sdb")

    def recipe(self) -> dict:
        return {"backend": "simpledb", "workdir": self.workdir,
                "endpoint_url": self.endpoint_url, "prefix": self.prefix}

    def store(self):
        from core.stores.simpledb import SimpleDBJobStore

        return SimpleDBJobStore(self._client, f"{self.prefix}-jobs", f"{self.prefix}-nodes")

    def close(self) -> None:
        if self._owner:
            for suffix in ("jobs", "nodes"):
                self._client.delete_domain(DomainName=f"{self.prefix}-{suffix}")
        self._client.close()


class DynamoDBBackend:
    """The DynamoDB job store on the session's moto server; no queues.
    Tables carry a prefix of this backend's own; the backend that made them
    deletes them at close."""

    servers = ("moto_server",)

    def __init__(self, workdir: str, moto_server=None, endpoint_url: str = "",
                 prefix: str = ""):
        from core.aws import client
        from core.settings import Settings

        self.workdir = workdir
        self.endpoint_url = endpoint_url or moto_server.endpoint_url
        self._owner = not prefix
        self.prefix = prefix or unique_name("ddb")
        self._client = client(Settings(backend="aws", aws_endpoint_url=self.endpoint_url),
                              "dynamodb")

    def recipe(self) -> dict:
        return {"backend": "dynamodb", "workdir": self.workdir,
                "endpoint_url": self.endpoint_url, "prefix": self.prefix}

    def store(self):
        from core.stores.dynamodb import DynamoDBJobStore

        return DynamoDBJobStore(self._client, f"{self.prefix}-jobs", f"{self.prefix}-nodes")

    def close(self) -> None:
        if self._owner:
            tables = self._client.list_tables()["TableNames"]
            for suffix in ("jobs", "nodes"):
                if f"{self.prefix}-{suffix}" in tables:
                    self._client.delete_table(TableName=f"{self.prefix}-{suffix}")
        self._client.close()


BACKENDS = {"sqlite": SQLiteBackend, "sqs": SQSBackend, "simpledb": SimpleDBBackend,
            "dynamodb": DynamoDBBackend}


def open_backend(recipe: dict):
    """The backend a `recipe()` describes, for use in a child process."""
    extra = {key: value for key, value in recipe.items() if key not in ("backend", "workdir")}
    return BACKENDS[recipe["backend"]](recipe["workdir"], **extra)


def _start_python(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
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


def pytest_generate_tests(metafunc):
    """Run a test that uses `backend` once per backend that has the parts it
    uses: store tests over backends with store(), queue tests over backends
    with queue(). A backend class may have either part or both."""
    if "backend" not in metafunc.fixturenames:
        return
    parts = [part for fixture, part in (("store", "store"), ("queue_factory", "queue"))
             if fixture in metafunc.fixturenames]
    names = [name for name in sorted(BACKENDS)
             if all(hasattr(BACKENDS[name], part) for part in parts)]
    metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def backend(request, tmp_path):
    backend_class = BACKENDS[request.param]
    # Servers (session fixtures) start only when a backend that needs them runs.
    servers = {name: request.getfixturevalue(name)
               for name in getattr(backend_class, "servers", ())}
    built = backend_class(str(tmp_path), **servers)
    yield built
    built.close()


@pytest.fixture
def store(backend):
    if not hasattr(backend, "store"):
        pytest.skip(f"{type(backend).__name__} has no job store")
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
    if not hasattr(backend, "queue"):
        pytest.skip(f"{type(backend).__name__} has no queue")
    factory = QueueFactory(backend)
    yield factory
    factory.close()
