"""`nommer` as a real process against the real API over HTTP: status, list,
cancel, retry, watch and logs, with --api and --token, and their exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.process.test_api import PROJECT_DIR, TOKEN, Api

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def api(token_api):
    return token_api


def nommer(api: Api, *args, token: str | None = TOKEN, cwd=None) -> subprocess.CompletedProcess:
    """Run the CLI against `api`, with no settings file or NOMMER_ variable of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMMER_")}
    env.update(PYTHONPATH=str(PROJECT_DIR), COLUMNS="160")
    options = ["--api", api.base_url] + (["--token", token] if token is not None else [])
    return subprocess.run([sys.executable, "-m", "core.app.cli", *args, *options],
                          capture_output=True, text=True, timeout=60, env=env,
                          cwd=cwd or api.settings.data_path.parent)


def test_status_prints_readable_text_and_json_for_scripts(api):
    job_id = api.submit(token=TOKEN)

    text = nommer(api, "status", job_id)
    as_json = nommer(api, "status", job_id, "--json")

    assert text.returncode == 0, text.stderr
    assert f"job      {job_id}" in text.stdout and "state    PENDING 0%" in text.stdout
    assert "master.mp4" in text.stdout
    assert json.loads(as_json.stdout)["id"] == job_id


def test_list_filters_by_state_and_cancel_then_retry_change_the_job(api):
    kept, cancelled = api.submit(token=TOKEN), api.submit(token=TOKEN)

    assert nommer(api, "cancel", cancelled).stdout.split() == [cancelled, "CANCELLED"]
    listed = nommer(api, "list", "--state", "cancelled")
    everything = nommer(api, "list")

    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == [cancelled]
    assert [line.split()[0] for line in everything.stdout.splitlines()[1:]] == [cancelled, kept]
    retried = nommer(api, "retry", cancelled)
    assert retried.stdout.split() == [cancelled, "PENDING"], retried.stderr
    assert api.backends.store.get_job(cancelled).state.value == "PENDING"


def test_notify_queues_the_current_state_again_or_says_why_not(api):
    job_id = api.submit(token=TOKEN)
    silent = api.submit(token=TOKEN, notify_url=None)
    api.backends.state_changes.receive(max_messages=10)  # the submits' own announcements

    sent = nommer(api, "notify", job_id)
    refused = nommer(api, "notify", silent)

    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == f"{job_id} PENDING: notification queued"
    queued = [json.loads(m.body) for m in api.backends.state_changes.receive(max_messages=10)]
    assert [(c["job_id"], c["state"]) for c in queued] == [(job_id, "PENDING")]
    assert refused.returncode == 3 and "notify_url" in refused.stderr


def test_exit_codes_tell_refusals_from_an_unreachable_api(api, tmp_path):
    job_id = api.submit(token=TOKEN)

    not_ended = nommer(api, "retry", job_id)
    unknown = nommer(api, "status", "0123456789abcdef")
    wrong_token = nommer(api, "list", token="wrong")
    api.stop()
    unreachable = nommer(api, "list")
    api.stop = lambda: None  # stopped already; the fixture's stop() must not run twice

    assert (not_ended.returncode, unknown.returncode, wrong_token.returncode) == (3, 3, 3)
    assert "only a job that ended" in not_ended.stderr
    assert "token" in wrong_token.stderr
    assert unreachable.returncode == 4 and "cannot reach the API" in unreachable.stderr


def test_watch_shows_the_active_jobs_and_the_queue(api):
    first, second = api.submit(token=TOKEN), api.submit(token=TOKEN)
    api.request("POST", f"/jobs/{second}/cancel", token=TOKEN)

    shown = nommer(api, "watch", "--times", "1")

    assert shown.returncode == 0, shown.stderr
    assert "queued 2, in flight 0, active jobs 1" in shown.stdout
    assert first in shown.stdout and second not in shown.stdout


def test_logs_prints_the_last_lines_of_one_program_or_all(api, tmp_path):
    logs = api.settings.data_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "api.log").write_text("".join(f"api line {n}\n" for n in range(30)))
    (logs / "nommerd_00.log").write_text("encoder line\n")

    one = nommer(api, "logs", "api", "-n", "3")
    every = nommer(api, "logs")
    missing = nommer(api, "logs", "scaler")

    assert one.stdout.splitlines() == ["api line 27", "api line 28", "api line 29"]
    assert "nommerd_00: encoder line" in every.stdout and "api: api line 29" in every.stdout
    assert missing.returncode == 2 and "programs: api, nommerd" in missing.stderr
