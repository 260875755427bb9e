"""The feeder's JSON API, served by waitress.

Routes (every answer is JSON with "success"; errors add "error_code" and
"message"):

    POST /job/submit/          the original's call: {source_path, dest_path,
                               notify_url?, notify_format?, job_options} -> {"job_id"}; or
                               {source_path, notify_url?, notify_format?, outputs: [...]}
    GET  /jobs/<id>            one job
    GET  /jobs?state=&limit=&cursor=
                               jobs newest first, a page at a time
    POST /jobs/<id>/cancel     cancel a job that has not ended
    POST /jobs/<id>/retry      run again a job that ended ERROR, ABANDONED or
                               CANCELLED (same id, history kept)
    POST /jobs/<id>/notify     send the job's current state to its notify_url again (202)
    GET  /presets              the catalogue presets a submit may name
    GET  /health               queue counts; 503 when the store or queue fails
    GET  /encoders             encoders as they last reported themselves
    GET  /metrics              the whole system's figures, Prometheus text format
    GET  /openapi.json         this API described in OpenAPI 3.1
    GET  /                     the dashboard (a static page that calls the routes above)

Reads go straight to the store, so any number of API processes can run.
Bad input is answered 4xx with a message naming the field; no input reaches
the 500 path, and no answer ever carries a traceback.
"""
from __future__ import annotations

import argparse
import hmac
import importlib.metadata
import json
import logging
import re
import signal
import sys
import time

import bottle
import waitress

from core import uris
from core.backends import Backends, open_backends
from core.errors import (BackendError, ConflictError, InvalidTransition, NommerError,
                         NotFound, ValidationError)
from core.jobs import NOTIFY_FORMATS, Job, JobState
from core.log_batching import log_to_stderr_in_batches
from core.outputs import options_for_submit, sent_options
from core.reach import listen_refusal
from core.presets import listing as preset_listing
from core.settings import Settings, load
from feeder import dashboard, metrics as system_metrics, openapi
from feeder.waitress_json import answer_errors_as_json

# Named explicitly: run as `python -m feeder.api`, __name__ is "__main__".
log = logging.getLogger("feeder.api")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_CURSOR_CHARS = 1024
# Answers of GET /jobs/<id> kept for jobs read again unchanged.
KEPT_ANSWERS = 1024

SUBMIT_FIELDS = ("source_path", "dest_path", "notify_url", "notify_format", "job_options",
                 "preset", "outputs")

# Bodies are parsed as JSON whatever these say: the original's client library
# (urllib2 with a JSON string as data) sends application/x-www-form-urlencoded.
_BODY_TYPES = frozenset({"", "application/json", "text/json", "text/plain",
                         "application/x-www-form-urlencoded"})
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_LIMIT = re.compile(r"[0-9]{1,4}")

_STATUS_CODES = {
    400: "BADINPUT", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOTFOUND",
    405: "METHOD_NOT_ALLOWED", 409: "CONFLICT", 411: "LENGTH_REQUIRED",
    413: "TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 500: "INTERNAL",
    503: "UNAVAILABLE",
}
_STATUS_MESSAGES = {
    404: "no such resource",
    405: "method not allowed for this resource",
    500: "internal error; the server log has the details",
}


class ApiError(Exception):
    """An answer other than 200: HTTP status, wire error code and message."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or _STATUS_CODES.get(status, "ERROR")
        self.headers = headers or {}


def _json_response(status: int, payload: dict,
                   headers: dict[str, str] | None = None) -> bottle.HTTPResponse:
    response = bottle.HTTPResponse(body=json.dumps(payload), status=status,
                                   headers=headers or {})
    response.content_type = "application/json"
    return response


def _ok(**payload) -> str:
    # Through the request's own response rather than a new HTTPResponse,
    # which Bottle would copy over it: the most frequent answers cost less.
    bottle.response.content_type = "application/json"
    return json.dumps({"success": True, **payload})


def _failure(error: ApiError) -> bottle.HTTPResponse:
    return _json_response(error.status, {"success": False, "error_code": error.code,
                                         "message": str(error)}, error.headers)


def job_view(job: Job) -> dict:
    """What a client sees of a job: URIs redacted, internals (lease, version) left out.

    Made from the job's stored fields alone: GET /jobs/<id> keeps answers
    while nothing is committed to the store (see _Routes.get_job)."""
    return {
        "id": job.id,
        "state": JobState(job.state).value,
        "state_details": job.state_details,
        "progress": job.progress,
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "updated_at": job.updated_at.isoformat() if job.updated_at else None,
        "node": job.node,
        "source": uris.redact(job.source),
        "destination": uris.redact(job.destination),
        "notify_url": uris.redact(job.notify_url),
        "options": job.options,
        # What the client sent: a preset's name, or options before translation.
        "sent_options": job.sent_options,
        # What each output is, once the job FINISHED.
        "outputs": job.outputs,
        "notify_format": job.notify_format,
        "notifications_given_up": job.notifications_given_up,
    }


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json_body(request: bottle.BaseRequest, max_bytes: int) -> object:
    """The request body parsed as JSON. Raises ApiError 413 when it is larger
    than `max_bytes`, 415 for a non-JSON content type, 400 when it is not
    JSON (NaN and Infinity included: they are not JSON)."""
    content_type = request.content_type.split(";")[0].strip().lower()
    if content_type not in _BODY_TYPES:
        raise ApiError(415, "send the request body as JSON (Content-Type: application/json)")
    if request.content_length > max_bytes:
        raise ApiError(413, f"the request body is larger than {max_bytes} bytes")
    raw = request.body.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ApiError(413, f"the request body is larger than {max_bytes} bytes")
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        parsed = json.loads(raw.decode("utf-8-sig"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 JSON") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not _valid_unicode(parsed):
        # "\ud800" is valid JSON but no character: it cannot be stored,
        # logged or sent on, so it is refused here, wherever it is.
        raise ApiError(400, "the request body contains invalid Unicode (a lone surrogate escape)")
    return parsed


def _valid_unicode(value: object) -> bool:
    """True when no string in `value` (keys included) holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


class _Guard:
    """Bottle plugin around every route: the bearer token, then the
    translation of the project's errors into JSON answers."""

    name = "nommer_guard"
    api = 2

    def __init__(self, token: str):
        self._token = token.encode("utf-8")

    def apply(self, callback, route):
        public = route.config.get("public", False)

        def guarded(*args, **kwargs):
            try:
                if self._token and not public:
                    self._authorize(bottle.request)
                return callback(*args, **kwargs)
            except bottle.HTTPResponse:
                raise
            except Exception as exc:  # every failure, even a bug, must answer JSON
                return _failure(_translate(exc))
        return guarded

    def _authorize(self, request: bottle.BaseRequest) -> None:
        scheme, _, credentials = request.get_header("Authorization", "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                credentials.strip().encode("utf-8"), self._token):
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="media-nommer"'})


def _translate(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return ApiError(400, str(exc), exc.code)
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, (InvalidTransition, ConflictError)):
        return ApiError(409, str(exc))
    if isinstance(exc, BackendError):
        log.error("backend failure: %s", exc)
        return ApiError(503, "the job store or queue is unavailable; try again later")
    log.exception("unexpected error")
    return ApiError(500, _STATUS_MESSAGES[500])


class _Routes:
    """The handlers, bound to one set of backends and settings."""

    def __init__(self, backends: Backends, settings: Settings):
        self.backends = backends
        self.settings = settings
        # job id -> (the store's commit mark read before the job, its answer).
        # Clients poll jobs, which mostly have not changed: while the mark
        # holds, nothing was committed, so the answer is still the job as
        # stored. Reading and rendering it again costs several times more,
        # most of it in sqlite3 calls handing the GIL to the other threads.
        self._answers: dict[str, tuple[object, str]] = {}

    def submit(self):
        body = read_json_body(bottle.request, self.settings.max_request_bytes)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object with "
                                f"{', '.join(SUBMIT_FIELDS)}")
        unknown = sorted(set(body) - set(SUBMIT_FIELDS))
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0][:40]!r}; "
                                f"known fields: {', '.join(SUBMIT_FIELDS)}")
        source = uris.check_source(body.get("source_path"), self.settings)
        destination, options = options_for_submit(body, self.settings)
        notify_url = body.get("notify_url")
        # The original's client sends "notify_url": null when there is none.
        if notify_url is not None and notify_url != "":
            notify_url = uris.check_notify_url(notify_url, self.settings)
        else:
            notify_url = None
        # What the client sent: its job_options (with a preset named beside
        # them), or its outputs.
        sent = sent_options(body)
        notify_format = _notify_format(body.get("notify_format"), self.settings)
        job = self.backends.jobs.submit(source, destination, options, notify_url,
                                        sent_options=sent, notify_format=notify_format)
        log.info("job %s submitted", job.id)
        return _ok(job_id=job.id)

    def get_job(self, job_id: str):
        store = self.backends.store
        mark = store.commit_mark()
        kept = self._answers.get(job_id)
        if mark is not None and kept is not None and kept[0] == mark:
            bottle.response.content_type = "application/json"
            return kept[1]
        answer = _ok(job=job_view(store.get_job(_checked_id(job_id))))
        if mark is not None:
            if len(self._answers) >= KEPT_ANSWERS:
                self._answers.clear()
            self._answers[job_id] = (mark, answer)
        return answer

    def list_jobs(self):
        query = bottle.request.query
        state = _state_param(query.get("state", ""))
        limit = _limit_param(query.get("limit", ""))
        cursor = _cursor_param(query.get("cursor", ""))
        try:
            jobs, next_cursor = self.backends.store.list_jobs(state=state, limit=limit,
                                                              cursor=cursor)
        except ValidationError:
            raise ApiError(400, "cursor is not one this API handed out") from None
        return _ok(jobs=[job_view(job) for job in jobs], next_cursor=next_cursor)

    def cancel(self, job_id: str):
        job = self.backends.jobs.cancel(_checked_id(job_id))
        log.info("job %s cancelled", job.id)
        return _ok(job=job_view(job))

    def retry(self, job_id: str):
        job = self.backends.jobs.retry(_checked_id(job_id))
        log.info("job %s retried", job.id)
        return _ok(job=job_view(job))

    def notify(self, job_id: str):
        job = self.backends.jobs.renotify(_checked_id(job_id))
        log.info("job %s: notification of %s queued again", job.id, job.state)
        return _json_response(202, {"success": True, "job": job_view(job)})

    def presets(self):
        return _ok(presets=preset_listing())

    def metrics_text(self):
        body, content_type = system_metrics.render(self.backends)
        return bottle.HTTPResponse(body=body, status=200,
                                   headers={"Content-Type": content_type})

    def encoders(self):
        nodes = sorted(self.backends.store.list_nodes(), key=lambda node: node.id)
        return _ok(encoders=[{
            "id": node.id, "state": node.state, "active_jobs": node.active_jobs,
            "last_report": node.last_report.isoformat() if node.last_report else None,
            "started_at": node.started_at.isoformat() if node.started_at else None,
        } for node in nodes])

    def description(self):
        return _json_response(200, openapi.describe(_version()))

    def dashboard_page(self):
        return bottle.HTTPResponse(body=dashboard.page(), status=200,
                                   headers=dashboard.headers())

    def health(self):
        queued, in_flight = self.backends.new_jobs.counts()
        # One cheap read proves the store answers too.
        self.backends.store.list_jobs(limit=1)
        return _ok(status="ok", queued=queued, in_flight=in_flight)


def _version() -> str:
    try:
        return importlib.metadata.version("media-nommer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _checked_id(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        raise ApiError(404, "no such job")
    return job_id


def _notify_format(raw: object, settings: Settings) -> str:
    """The submitted notify_format ("form" when absent). A JSON notification
    is only sent signed, so it is refused while webhook_secret is unset."""
    if raw is None:
        return "form"
    if raw not in NOTIFY_FORMATS:
        raise ApiError(400, "notify_format must be one of "
                            f"{', '.join(repr(f) for f in NOTIFY_FORMATS)}")
    if raw == "json" and not settings.webhook_secret:
        raise ApiError(400, "notify_format 'json' needs the webhook_secret setting on the "
                            "feeder (JSON notifications are always signed); ask its operator "
                            "to set it, or use notify_format 'form'")
    return raw


def _state_param(raw: str) -> JobState | None:
    if not raw:
        return None
    try:
        return JobState(raw.strip().upper())
    except ValueError:
        raise ApiError(400, "state must be one of "
                            f"{', '.join(s.value for s in JobState)}") from None


def _limit_param(raw: str) -> int:
    if not raw:
        return DEFAULT_PAGE_SIZE
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def _cursor_param(raw: str) -> str | None:
    if not raw:
        return None
    if len(raw) > MAX_CURSOR_CHARS or not raw.isascii() or not raw.isprintable():
        raise ApiError(400, "cursor is not one this API handed out")
    return raw


def _error_page(error: bottle.HTTPError) -> str:
    """Bottle's own errors (unknown route, wrong method, a crash outside a
    route) as JSON, never HTML and never with a traceback."""
    status = error.status_code
    bottle.response.content_type = "application/json"
    message = _STATUS_MESSAGES.get(status) or (error.status_line.split(" ", 1)[-1].lower())
    return json.dumps({"success": False, "error_code": _STATUS_CODES.get(status, "ERROR"),
                       "message": message})


def _printable(text: str, limit: int = 200) -> str:
    if len(text) <= limit and text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _start_timer() -> None:
    bottle.request.environ["nommer.started"] = time.monotonic()


def _log_request() -> None:
    # The path only: query strings may carry cursors or tokens, and headers
    # (Authorization) are never logged.
    environ = bottle.request.environ
    started = environ.get("nommer.started", time.monotonic())
    log.info("%s %s %s %d %.1fms", environ.get("REMOTE_ADDR", "-"),
             _printable(environ.get("REQUEST_METHOD", "-"), 16),
             _printable(environ.get("PATH_INFO", "")), bottle.response.status_code,
             (time.monotonic() - started) * 1000)


def make_app(backends: Backends, settings: Settings) -> bottle.Bottle:
    """The API as a WSGI application over `backends`.

    With `settings.api_token` set, every route but /health needs
    "Authorization: Bearer <token>".
    """
    app = bottle.Bottle()
    # An instance attribute: every status without its own handler answers JSON.
    app.default_error_handler = _error_page
    app.add_hook("before_request", _start_timer)
    app.add_hook("after_request", _log_request)
    app.install(_Guard(settings.api_token))
    routes = _Routes(backends, settings)
    # The original's client posts to "job/submit" without the slash.
    app.route("/job/submit/", "POST", routes.submit)
    app.route("/job/submit", "POST", routes.submit)
    app.route("/jobs", "GET", routes.list_jobs)
    app.route("/jobs/", "GET", routes.list_jobs)
    app.route("/jobs/<job_id>", "GET", routes.get_job)
    app.route("/jobs/<job_id>/cancel", "POST", routes.cancel)
    app.route("/jobs/<job_id>/retry", "POST", routes.retry)
    app.route("/jobs/<job_id>/notify", "POST", routes.notify)
    app.route("/presets", "GET", routes.presets)
    app.route("/health", "GET", routes.health, public=True)
    app.route("/metrics", "GET", routes.metrics_text)
    app.route("/encoders", "GET", routes.encoders)
    # Public: neither carries data; the page asks for the token itself.
    app.route("/openapi.json", "GET", routes.description, public=True)
    app.route("/", "GET", routes.dashboard_page, public=True)
    return app


def _stop_on_sigterm(signum, frame) -> None:
    # waitress's loop ends on SystemExit and lets its worker threads finish.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Run the API until SIGTERM or Ctrl-C. Returns the exit code: 2 when the
    settings are wrong or the API would listen beyond loopback without a token."""
    parser = argparse.ArgumentParser(prog="nommer-api", description="media-nommer's JSON API")
    parser.add_argument("--config", help="nomconf.toml (default: $NOMMER_CONFIG)")
    args = parser.parse_args(argv)
    # A line per request: written in batches, not one write each (core.log_batching).
    log_to_stderr_in_batches(logging.INFO, "%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load(args.config)
    except NommerError as exc:
        print(f"nommer-api: {exc}", file=sys.stderr)
        return 2
    refusal = listen_refusal(settings)
    if refusal:
        print(f"nommer-api: {refusal}", file=sys.stderr)
        return 2
    try:
        backends = open_backends(settings, interactive=True)
    except NommerError as exc:
        print(f"nommer-api: {exc}", file=sys.stderr)
        return 2
    try:
        server = waitress.create_server(
            make_app(backends, settings), host=settings.api_host, port=settings.api_port,
            threads=settings.api_threads, ident="media-nommer",
            # The app answers oversize bodies with JSON; this bound only stops
            # waitress from buffering absurd ones before the app sees them.
            max_request_body_size=max(1024 * 1024, 16 * settings.max_request_bytes))
        answer_errors_as_json(server)
    except OSError as exc:
        backends.close()
        print(f"nommer-api: cannot listen on {settings.api_host}:{settings.api_port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    log.info("listening on http://%s:%s", settings.api_host, server.effective_port)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        backends.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
