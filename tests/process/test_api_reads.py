"""`python -m feeder.api` reads a job as last committed, whichever of its
threads answers and whichever process wrote: the job store keeps rows it has
read only while nothing was committed since."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import urllib3

from core.backends import open_backends
from core.settings import load
from tests.process.test_api import free_port

pytestmark = pytest.mark.timeout(120)

PROJECT_DIR = Path(__file__).resolve().parents[2]
CONNECTIONS = 4


@pytest.fixture
def api(tmp_path):
    """The API as its own process, 4 threads, on the test's data folder."""
    port = free_port()
    config = tmp_path / "nomconf.toml"
    config.write_text(f"data_dir = {json.dumps(str(tmp_path / 'var'))}\n"
                      f"api_port = {port}\napi_threads = {CONNECTIONS}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMMER_")}
    env["PYTHONPATH"] = str(PROJECT_DIR)
    process = subprocess.Popen([sys.executable, "-m", "feeder.api", "--config", str(config)],
                               cwd=str(PROJECT_DIR), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "the API exited"
            try:
                urllib3.request("GET", f"{base_url}/health", timeout=2, retries=False)
                break
            except urllib3.exceptions.HTTPError:
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.05)
        yield base_url, load(config)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_api_thread_reads_each_write_at_once(api):
    base_url, settings = api
    media = settings.file_root_paths[0]
    (media / "in").mkdir(parents=True)
    (media / "in" / "clip.mp4").write_bytes(b"")
    submitted = urllib3.request("POST", f"{base_url}/job/submit/", json={
        "source_path": (media / "in" / "clip.mp4").as_uri(),
        "dest_path": (media / "out" / "clip.mp4").as_uri(),
        "job_options": {"preset": "mp4-720p"}}).json()
    job_id = submitted["job_id"]
    # Keep-alive connections read at the same time, so several API threads
    # (each with its own SQLite connection and kept rows) answer.
    pools = [urllib3.HTTPConnectionPool("127.0.0.1", int(base_url.rsplit(":", 1)[1]),
                                        maxsize=1, retries=False) for _ in range(CONNECTIONS)]
    path = f"/jobs/{job_id}"

    def read_all() -> list[dict]:
        with concurrent.futures.ThreadPoolExecutor(CONNECTIONS) as readers:
            answers = list(readers.map(lambda pool: pool.request("GET", path).json(), pools))
        return [answer["job"] for answer in answers]

    backends = open_backends(settings)  # this process: another writer than the API
    try:
        for progress in range(1, 11):
            before = backends.store.get_job(job_id)
            assert {job["progress"] for job in read_all()} == {progress - 1}
            backends.store.update_job(dataclasses.replace(before, progress=progress),
                                      before.version)
            assert {job["progress"] for job in read_all()} == {progress}
        # A write through the API itself, on whichever thread takes it.
        cancelled = pools[0].request("POST", f"{path}/cancel").json()
        assert cancelled["job"]["state"] == "CANCELLED"
        assert {job["state"] for job in read_all()} == {"CANCELLED"}
    finally:
        backends.close()
        for pool in pools:
            pool.close()
