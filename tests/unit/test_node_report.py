"""A job's start is reported by nommerd's main loop, never by the worker
that claimed it: a node-record write hanging in retries must not keep a
worker from starting its lease watchdog. On the real SQLite store and the
real main loop."""
from __future__ import annotations

import threading

import pytest

from core.app.local_system import wait_for
from core.backends import open_backends
from core.settings import Settings
from nommerd.daemon import Daemon


@pytest.fixture
def daemon(tmp_path):
    settings = Settings(data_dir=str(tmp_path), file_roots=(str(tmp_path),),
                        max_encoding_jobs_per_ec2_instance=1,
                        nommerd_heartbeat_interval_s=3600, nommerd_max_inactivity=3600)
    backends = open_backends(settings)
    built = Daemon(settings, backends, "node-1")
    yield built
    backends.close()


def test_a_job_start_is_written_by_the_main_loop_not_the_worker(daemon):
    store = daemon.backends.store
    daemon.control.job_started()           # what a worker does after its claim
    assert store.get_node("node-1") is None
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        node = wait_for(lambda: (lambda n: n if n and n.state == "working" else None)(
            store.get_node("node-1")), 10, what="the main loop to report the job")
        assert node.active_jobs == 1
    finally:
        daemon.control.job_ended()
        daemon.on_signal(15, None)  # what SIGTERM does
        runner.join(timeout=30)
    assert not runner.is_alive()
