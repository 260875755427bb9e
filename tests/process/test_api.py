"""The feeder's JSON API over real HTTP: waitress on 127.0.0.1, a real SQLite
store and queues in the test's folder, and `python -m feeder.api` itself."""
from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import waitress

from core.backends import open_backends
from core.settings import Settings
from feeder.api import make_app

pytestmark = pytest.mark.timeout(60)

PROJECT_DIR = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-for-tests"
HTTP_TIMEOUT_S = 10

# The original's documented /job/submit/ body; only the s3:// paths (which
# carried AWS keys) are replaced by file:// paths inside the test's root.
ORIGINAL_JOB_OPTIONS = {
    "nommer": "media_nommer.ec2nommerd.nommers.ffmpeg.FFmpegNommer",
    "options": [
        {"outfile_options": [
            ["vcodec", "libx264"], ["preset", "medium"], ["vprofile", "baseline"],
            ["b", "400k"], ["vf", "yadif,scale='640:trunc(ow/a/2)*2'"], ["pass", "1"],
            ["f", "mp4"], ["an", None]]},
        {"outfile_options": [
            ["vcodec", "libx264"], ["preset", "medium"], ["vprofile", "baseline"],
            ["b", "400k"], ["vf", "yadif,scale='640:trunc(ow/a/2)*2'"], ["pass", "2"],
            ["acodec", "libfaac"], ["ab", "128k"], ["ar", "48000"], ["async", "480"],
            ["ac", "2"], ["f", "mp4"]],
         "move_atom_to_front": True},
    ],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Answer:
    def __init__(self, status: int, headers, raw: bytes):
        self.status = status
        self.headers = headers
        self.raw = raw
        self.json = json.loads(raw)


class Api:
    """make_app under waitress in a thread, on a free port, with its own backends."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.media = settings.file_root_paths[0]
        self.media.mkdir(parents=True, exist_ok=True)
        self.backends = open_backends(settings)
        self.app = make_app(self.backends, settings)
        self.server = waitress.create_server(self.app, host="127.0.0.1", port=0, threads=4)
        self.base_url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        # Sockets are closed by the loop's own thread (a trigger thunk): closing
        # them from here would pull them out from under its select().
        def close_everything():
            for channel in list(self.server._map.values()):
                channel.close()

        self.server.trigger.pull_trigger(close_everything)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "waitress did not stop"
        self.server.task_dispatcher.shutdown()
        self.backends.close()

    def uri(self, name: str) -> str:
        return (self.media / name).as_uri()

    def request(self, method: str, path: str, body=None, headers=None,
                token: str | None = None) -> Answer:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers=all_headers)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return Answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Answer(error.code, error.headers, error.read())

    def submit_body(self, **changes) -> dict:
        body = {"source_path": self.uri("in/master.mp4"),
                "dest_path": self.uri("out/master-640.mp4"),
                "notify_url": "http://myapp.somewhere.com/encoding/job_done/",
                "job_options": copy.deepcopy(ORIGINAL_JOB_OPTIONS)}
        body.update(changes)
        return body

    def submit(self, token: str | None = None, **changes) -> str:
        answer = self.request("POST", "/job/submit/", self.submit_body(**changes), token=token)
        assert answer.status == 200, answer.json
        return answer.json["job_id"]


def settings_for(folder: Path, **values) -> Settings:
    return Settings(data_dir=str(folder / "var"), file_roots=(str(folder / "media"),), **values)


@pytest.fixture
def api(tmp_path):
    running = Api(settings_for(tmp_path))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory):
    """One API for the table of refused requests (none of them changes anything)."""
    folder = tmp_path_factory.mktemp("shared")
    running = Api(settings_for(folder, max_request_bytes=4096))
    outside = folder / "outside"
    outside.mkdir()
    os.symlink(outside, running.media / "escape")
    yield running
    running.stop()


def test_the_original_example_body_is_accepted_and_queued(api):
    answer = api.request("POST", "/job/submit/", api.submit_body())
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json["success"] is True
    job_id = answer.json["job_id"]
    assert set(answer.json) == {"success", "job_id"}

    job = api.backends.store.get_job(job_id)
    assert job.state.value == "PENDING"
    assert job.options["nommer"] == ORIGINAL_JOB_OPTIONS["nommer"]
    assert job.options["options"][1]["move_atom_to_front"] is True
    messages = api.backends.new_jobs.receive(max_messages=10)
    assert [m.body for m in messages] == [job_id]


def test_the_original_client_library_request_is_accepted(api):
    # media-nommer-api-python posts to "job/submit" (no slash), with urllib2's
    # default form content type, and sends notify_url null when there is none.
    body = api.submit_body(notify_url=None)
    answer = api.request("POST", "/job/submit", json.dumps(body).encode(),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status == 200 and answer.json["success"] is True
    assert api.backends.store.get_job(answer.json["job_id"]).notify_url is None


def test_a_job_is_shown_with_its_secrets_redacted(api):
    signed = "https://media.example.com/in.mp4?X-Amz-Signature=0bad5ecre7&X-Amz-Expires=60"
    job_id = api.submit(source_path=signed,
                        notify_url="https://app.example/done?token=n0tify-secret&job=1")
    answer = api.request("GET", f"/jobs/{job_id}")
    assert answer.status == 200 and answer.json["success"] is True
    job = answer.json["job"]
    assert job["id"] == job_id and job["state"] == "PENDING"
    assert {"state_details", "progress", "attempts", "created_at", "updated_at", "node",
            "options"} <= set(job)
    assert job["source"] == ("https://media.example.com/in.mp4?X-Amz-Signature=REDACTED"
                             "&X-Amz-Expires=REDACTED")
    assert job["destination"] == api.uri("out/master-640.mp4")
    assert job["notify_url"] == "https://app.example/done?token=REDACTED&job=1"
    assert b"0bad5ecre7" not in answer.raw and b"n0tify-secret" not in answer.raw
    # What the client sent, and what runs once 2011-era options are translated.
    assert job["sent_options"]["options"][0]["outfile_options"][0] == ["vcodec", "libx264"]
    assert job["options"]["options"][0]["outfile_options"][0] == ["c:v", "libx264"]


def test_jobs_are_listed_newest_first_a_page_at_a_time(api):
    ids = [api.submit() for _ in range(3)]
    first = api.request("GET", "/jobs?limit=2")
    assert first.status == 200
    assert [job["id"] for job in first.json["jobs"]] == ids[::-1][:2]
    assert first.json["next_cursor"]
    second = api.request("GET", f"/jobs?limit=2&cursor={first.json['next_cursor']}")
    assert [job["id"] for job in second.json["jobs"]] == [ids[0]]
    assert second.json["next_cursor"] is None

    api.request("POST", f"/jobs/{ids[1]}/cancel")
    pending = api.request("GET", "/jobs?state=PENDING").json["jobs"]
    assert [job["id"] for job in pending] == [ids[2], ids[0]]
    cancelled = api.request("GET", "/jobs?state=cancelled").json["jobs"]
    assert [job["id"] for job in cancelled] == [ids[1]]
    assert api.request("GET", "/jobs").json["next_cursor"] is None


def test_cancel_ends_a_job_once_and_then_conflicts(api):
    job_id = api.submit()
    answer = api.request("POST", f"/jobs/{job_id}/cancel")
    assert answer.status == 200 and answer.json["job"]["state"] == "CANCELLED"
    assert api.backends.store.get_job(job_id).state.value == "CANCELLED"
    again = api.request("POST", f"/jobs/{job_id}/cancel")
    assert again.status == 409
    assert again.json["success"] is False and again.json["error_code"] == "CONFLICT"


def test_health_reports_the_new_job_queue(api):
    assert api.request("GET", "/health").json == {
        "success": True, "status": "ok", "queued": 0, "in_flight": 0}
    api.submit()
    api.submit()
    api.backends.new_jobs.receive(max_messages=1)
    assert api.request("GET", "/health").json == {
        "success": True, "status": "ok", "queued": 1, "in_flight": 1}


def test_a_broken_store_answers_503_json(tmp_path):
    running = Api(settings_for(tmp_path))
    try:
        # The worker threads open their SQLite connections lazily: a file that
        # is no longer a database fails them as a real outage would.
        database = running.settings.database_path
        for suffix in ("-wal", "-shm"):
            Path(str(database) + suffix).unlink(missing_ok=True)
        database.write_bytes(b"this is not a database" * 512)
        for path in ("/health", "/jobs"):
            answer = running.request("GET", path)
            assert answer.status == 503, answer.json
            assert answer.json["success"] is False
            assert answer.json["error_code"] == "UNAVAILABLE"
            assert b"Traceback" not in answer.raw and b"sqlite" not in answer.raw.lower()
    finally:
        running.stop()


def test_an_unexpected_failure_is_a_500_json_without_details(api):
    def broken():
        raise RuntimeError("secret internals")

    api.app.route("/broken", "GET", broken)
    answer = api.request("GET", "/broken")
    assert answer.status == 500
    assert answer.json == {"success": False, "error_code": "INTERNAL",
                           "message": "internal error; the server log has the details"}


def test_with_a_token_every_route_but_health_needs_it(tmp_path):
    running = Api(settings_for(tmp_path, api_token=TOKEN))
    try:
        for method, path in (("GET", "/jobs"), ("GET", "/jobs/abc"),
                             ("POST", "/jobs/abc/cancel")):
            for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
                answer = running.request(method, path, token=token)
                assert answer.status == 401, (method, path, token)
                assert answer.json["error_code"] == "UNAUTHORIZED"
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        refused = running.request("POST", "/job/submit/", running.submit_body())
        assert refused.status == 401
        assert running.request("GET", "/jobs", headers={"Authorization": TOKEN}).status == 401
        assert running.request("GET", "/health").status == 200
        job_id = running.submit(token=TOKEN)
        answer = running.request("GET", f"/jobs/{job_id}", token=TOKEN)
        assert answer.status == 200 and answer.json["job"]["id"] == job_id
    finally:
        running.stop()


def _body(api: Api, **changes) -> bytes:
    return json.dumps(api.submit_body(**changes)).encode()


def _without(api: Api, field: str) -> bytes:
    body = api.submit_body()
    del body[field]
    return json.dumps(body).encode()


def _options(api: Api, **changes) -> bytes:
    options = copy.deepcopy(ORIGINAL_JOB_OPTIONS)
    options.update(changes)
    for key in [k for k, v in changes.items() if v is _DROP]:
        del options[key]
    return _body(api, job_options=options)


def _outfile(api: Api, *pairs) -> bytes:
    options = {"nommer": "ffmpeg", "options": [{"outfile_options": [list(p) for p in pairs]}]}
    return _body(api, job_options=options)


def _infile(api: Api, *pairs) -> bytes:
    options = {"nommer": "ffmpeg", "options": [{"infile_options": [list(p) for p in pairs]}]}
    return _body(api, job_options=options)


_DROP = object()
SECRET = "wJalrXUtnFEMI/K7MDENG"

# (id, method, path, body builder, extra headers, status, words in the message)
BAD_REQUESTS = [
    ("not-json", "POST", "/job/submit/", lambda a: b"source_path=x&dest_path=y", {},
     400, "not valid JSON"),
    ("json-array", "POST", "/job/submit/", lambda a: b"[1, 2]", {}, 400, "JSON object"),
    ("json-string", "POST", "/job/submit/", lambda a: b'"job"', {}, 400, "JSON object"),
    ("empty-body", "POST", "/job/submit/", lambda a: b"", {}, 400, "empty"),
    ("nan", "POST", "/job/submit/", lambda a: b'{"source_path": NaN}', {}, 400, "not valid JSON"),
    ("not-utf8", "POST", "/job/submit/", lambda a: b'{"source_path": "\xff"}', {}, 400, "UTF-8"),
    ("deep-nesting", "POST", "/job/submit/", lambda a: b"[" * 2000 + b"]" * 2000, {}, 400,
     "not valid JSON"),
    ("multipart", "POST", "/job/submit/", lambda a: _body(a),
     {"Content-Type": "multipart/form-data; boundary=x"}, 415, "JSON"),
    ("oversize", "POST", "/job/submit/",
     lambda a: _body(a, notify_url="http://app.example/" + "x" * 5000), {}, 413, "larger than"),
    ("unknown-field", "POST", "/job/submit/", lambda a: _body(a, priority="high"), {},
     400, "unknown field 'priority'"),
    ("unknown-preset", "POST", "/job/submit/", lambda a: _body(a, preset="movie_high_q"), {},
     400, "preset 'movie_high_q' is not known; known presets: audio-aac"),
    ("missing-source", "POST", "/job/submit/", lambda a: _without(a, "source_path"), {},
     400, "source_path is required"),
    ("missing-dest", "POST", "/job/submit/", lambda a: _without(a, "dest_path"), {},
     400, "dest_path is required"),
    ("missing-options", "POST", "/job/submit/", lambda a: _without(a, "job_options"), {},
     400, "job_options is required"),
    ("missing-nommer", "POST", "/job/submit/", lambda a: _options(a, nommer=_DROP), {},
     400, "job_options.nommer is required"),
    ("missing-passes", "POST", "/job/submit/", lambda a: _options(a, options=_DROP), {},
     400, "job_options.options is required"),
    ("empty-source", "POST", "/job/submit/", lambda a: _body(a, source_path=""), {},
     400, "source_path is required"),
    ("empty-dest", "POST", "/job/submit/", lambda a: _body(a, dest_path=""), {},
     400, "dest_path is required"),
    ("empty-job-options", "POST", "/job/submit/", lambda a: _body(a, job_options={}), {},
     400, "job_options is required"),
    ("empty-nommer", "POST", "/job/submit/", lambda a: _options(a, nommer=""), {},
     400, "job_options.nommer is required"),
    ("empty-passes", "POST", "/job/submit/", lambda a: _options(a, options=[]), {},
     400, "job_options.options is required"),
    ("number-source", "POST", "/job/submit/", lambda a: _body(a, source_path=42), {},
     400, "source_path must be a string"),
    ("number-dest", "POST", "/job/submit/", lambda a: _body(a, dest_path=4.2), {},
     400, "dest_path must be a string"),
    ("number-notify", "POST", "/job/submit/", lambda a: _body(a, notify_url=7), {},
     400, "notify_url must be a string"),
    ("number-nommer", "POST", "/job/submit/", lambda a: _options(a, nommer=1), {},
     400, "job_options.nommer"),
    ("string-job-options", "POST", "/job/submit/", lambda a: _body(a, job_options="{}"), {},
     400, "job_options is required"),
    ("unknown-nommer", "POST", "/job/submit/",
     lambda a: _options(a, nommer="media_nommer.ec2nommerd.nommers.x.Other"), {},
     400, "job_options.nommer"),
    ("three-passes", "POST", "/job/submit/",
     lambda a: _options(a, options=[{}, {}, {}]), {}, 400, "job_options.options has 3 passes"),
    ("option-i", "POST", "/job/submit/", lambda a: _outfile(a, ["i", "/etc/passwd"]), {},
     400, "job_options.options[0].outfile_options: option 'i' is not allowed"),
    ("filter-complex", "POST", "/job/submit/",
     lambda a: _outfile(a, ["filter_complex", "movie=/etc/passwd"]), {},
     400, "option 'filter_complex' is not allowed"),
    ("vf-movie", "POST", "/job/submit/",
     lambda a: _outfile(a, ["vf", "movie=/etc/passwd"]), {}, 400, "option 'vf'"),
    ("map-second-input", "POST", "/job/submit/", lambda a: _outfile(a, ["map", "1:v"]), {},
     400, "option 'map'"),
    ("hls-input", "POST", "/job/submit/", lambda a: _infile(a, ["f", "hls"]), {},
     400, "job_options.options[0].infile_options: option 'f'"),
    ("s3-credentials", "POST", "/job/submit/",
     lambda a: _body(a, source_path=f"s3://AKIAEXAMPLE:{SECRET}@bucket/in.mp4"), {},
     400, "source_path: credentials must not be put in URIs"),
    ("ftp-source", "POST", "/job/submit/",
     lambda a: _body(a, source_path="ftp://example.com/in.mp4"), {}, 400, "source_path"),
    ("ftp-notify", "POST", "/job/submit/",
     lambda a: _body(a, notify_url="ftp://example.com/done"), {}, 400, "notify_url"),
    ("outside-roots", "POST", "/job/submit/",
     lambda a: _body(a, source_path="file:///etc/passwd"), {}, 400, "source_path"),
    ("dotdot-escape", "POST", "/job/submit/",
     lambda a: _body(a, dest_path=a.uri("out") + "/../../../etc/cron.d/x"), {},
     400, "dest_path"),
    ("symlink-escape", "POST", "/job/submit/",
     lambda a: _body(a, source_path=a.uri("escape/key.pem")), {}, 400, "source_path"),
    ("bad-state", "GET", "/jobs?state=DONE", None, {}, 400, "state must be one of"),
    ("limit-0", "GET", "/jobs?limit=0", None, {}, 400, "limit"),
    ("limit-1000", "GET", "/jobs?limit=1000", None, {}, 400, "limit"),
    ("limit-abc", "GET", "/jobs?limit=abc", None, {}, 400, "limit"),
    ("limit-negative", "GET", "/jobs?limit=-1", None, {}, 400, "limit"),
    ("bad-cursor", "GET", "/jobs?cursor=not-a-cursor", None, {}, 400, "cursor"),
    ("forged-cursor", "GET", "/jobs?cursor=eyJ4IjogMX0=", None, {}, 400, "cursor"),
    ("unknown-job", "GET", "/jobs/0123456789abcdef", None, {}, 404, "not found"),
    ("odd-job-id", "GET", "/jobs/%2e%2e%2fetc", None, {}, 404, "no such"),
    ("cancel-unknown", "POST", "/jobs/0123456789abcdef/cancel", lambda a: b"", {}, 404,
     "not found"),
    ("unknown-route", "GET", "/admin", None, {}, 404, "no such resource"),
    ("wrong-method", "DELETE", "/job/submit/", None, {}, 405, "method not allowed"),
    ("get-submit", "GET", "/job/submit/", None, {}, 405, "method not allowed"),
]


@pytest.mark.parametrize("method, path, build, headers, status, words",
                         [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_json_4xx_naming_the_problem(shared_api, method, path, build,
                                                       headers, status, words):
    body = build(shared_api) if build else None
    answer = shared_api.request(method, path, body, headers=headers)
    assert answer.status == status, answer.json
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json["success"] is False
    assert isinstance(answer.json["error_code"], str) and answer.json["error_code"]
    assert words in answer.json["message"]
    assert b"Traceback" not in answer.raw and SECRET.encode() not in answer.raw
    if status == 400:
        assert answer.json["error_code"] == "BADINPUT"
    # Nothing refused was stored or queued.
    assert shared_api.backends.new_jobs.counts() == (0, 0)


def _run_api(config: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMMER_")}
    env["PYTHONPATH"] = str(PROJECT_DIR)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "feeder.api", "--config", str(config)],
                            cwd=str(PROJECT_DIR), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _write_config(folder: Path, **values) -> Path:
    lines = [f"data_dir = {json.dumps(str(folder / 'var'))}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    config = folder / "nomconf.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.com"])
def test_the_server_refuses_to_listen_beyond_loopback_without_a_token(tmp_path, host):
    process = _run_api(_write_config(tmp_path, api_host=host, api_port=free_port()))
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "api_token" in output and host in output


def test_the_server_reports_a_bad_config_with_exit_code_2(tmp_path):
    process = _run_api(_write_config(tmp_path, api_port="eighty"))
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 2 and "api_port" in output


def test_the_server_runs_logs_requests_without_queries_and_stops_on_sigterm(tmp_path):
    port = free_port()
    process = _run_api(_write_config(tmp_path, api_port=port, api_threads=2))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                            timeout=2) as response:
                    assert json.load(response)["status"] == "ok"
                    break
            except OSError:
                assert process.poll() is None, process.communicate(timeout=5)[0]
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs?cursor=qu3ry-s3cret",
                                   timeout=HTTP_TIMEOUT_S)
        assert refused.value.code == 400
        refused.value.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, output
    assert "GET /health 200" in output and "GET /jobs 400" in output
    assert "qu3ry-s3cret" not in output and "Traceback" not in output


def test_retry_resubmits_an_ended_job_and_refuses_one_still_running(api):
    job_id = api.submit()
    refused = api.request("POST", f"/jobs/{job_id}/retry")
    assert refused.status == 409 and refused.json["error_code"] == "CONFLICT"
    api.request("POST", f"/jobs/{job_id}/cancel")

    answer = api.request("POST", f"/jobs/{job_id}/retry")

    assert answer.status == 200
    job = answer.json["job"]
    assert (job["id"], job["state"]) == (job_id, "PENDING")
    assert job["state_details"] == "retry after CANCELLED: cancelled by request"
    assert api.request("POST", "/jobs/0123456789abcdef/retry").status == 404
