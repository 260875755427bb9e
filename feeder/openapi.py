"""GET /openapi.json: the API described in OpenAPI 3.1 (every route, body and error).

Kept beside the routes it describes: tests/process/test_openapi.py fails when
the app serves a route this description leaves out.
"""
from __future__ import annotations

from core.jobs import JobState

_ERROR_CODES = ["BADINPUT", "UNAUTHORIZED", "FORBIDDEN", "NOTFOUND", "METHOD_NOT_ALLOWED",
                "CONFLICT", "LENGTH_REQUIRED", "TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE",
                "INTERNAL", "UNAVAILABLE"]
_ERRORS = {
    "400": "bad input: the message names the field (error_code BADINPUT or a more precise code)",
    "401": "missing or wrong bearer token (only when api_token is set)",
    "404": "no such job or route",
    "405": "method not allowed for this route",
    "409": "the job is in a state that does not allow this",
    "411": "a body without Content-Length",
    "413": "the body is larger than max_request_bytes",
    "415": "a body that is not JSON",
    "500": "internal error; the server log has the details",
    "503": "the job store or queue is unavailable; try again later",
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(properties: dict, required: list[str], description: str) -> dict:
    schema = {"type": "object", "required": ["success", *required],
              "properties": {"success": {"const": True}, **properties}}
    return _json(schema, description)


def _responses(ok: dict, *errors: int) -> dict:
    answers = {"200": ok}
    for status in sorted({*errors, 401, 500}):
        answers[str(status)] = _json(_ref("Error"), _ERRORS[str(status)])
    return answers


_JOB_ID = {"name": "job_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}}
_JOB_ANSWER = _ok({"job": _ref("Job")}, ["job"], "the job")


def _submit() -> dict:
    return {
        "summary": "Queue an encoding job (the original media-nommer call)",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("SubmitRequest")}}},
        "responses": _responses(_ok({"job_id": {"type": "string"}}, ["job_id"], "queued"),
                                400, 411, 413, 415, 503),
    }


def _action(summary: str) -> dict:
    return {"post": {"summary": summary, "parameters": [_JOB_ID],
                     "responses": _responses(_JOB_ANSWER, 404, 409, 503)}}


def _list_jobs() -> dict:
    return {"get": {
        "summary": "Jobs newest first, a page at a time",
        "parameters": [
            {"name": "state", "in": "query", "schema": {"type": "string",
                                                        "enum": [s.value for s in JobState]},
             "description": "only jobs in this state (any case)"},
            {"name": "limit", "in": "query",
             "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
            {"name": "cursor", "in": "query", "schema": {"type": "string"},
             "description": "next_cursor of the previous page"}],
        "responses": _responses(_ok({"jobs": {"type": "array", "items": _ref("Job")},
                                     "next_cursor": {"type": ["string", "null"]}},
                                    ["jobs", "next_cursor"], "a page of jobs"), 400, 503)}}


def _schemas() -> dict:
    text_or_null = {"type": ["string", "null"]}
    return {
        "Error": {"type": "object", "required": ["success", "error_code", "message"],
                  "properties": {"success": {"const": False},
                                 "error_code": {"type": "string", "enum": _ERROR_CODES},
                                 "message": {"type": "string"}}},
        "SubmitRequest": {
            "type": "object", "required": ["source_path"],
            "oneOf": [{"required": ["dest_path"],
                       "anyOf": [{"required": ["job_options"]}, {"required": ["preset"]}]},
                      {"required": ["outputs"]}],
            "additionalProperties": False,
            "properties": {
                "source_path": {"type": "string", "description": "file://, http(s):// or s3:// URI"},
                "dest_path": {"type": "string", "description":
                              "file:// or s3:// URI; for the hls and sprite presets a prefix "
                              "ending in '/', or the master playlist (.m3u8) or track (.vtt) "
                              "to write in its folder"},
                "notify_url": {**text_or_null, "description": "receives each state change"},
                "notify_format": {"type": "string", "enum": ["form", "json"], "default": "form",
                                  "description": "form: the original's form POST; json: the "
                                  "JobNotification body, signed (needs webhook_secret on the "
                                  "feeder, else 400)"},
                "job_options": {"type": "object", "description":
                                "{nommer, options: [passes]} as the original, or "
                                "{preset: NAME, overrides...} (see GET /presets), or "
                                "{preset: 'hls', ladder, segment_s, segment_type, "
                                "audio_bitrate, encoder_preset}"},
                "preset": {"type": "string", "description":
                           "a preset's name (GET /presets); job_options then holds only its "
                           "overrides"},
                "outputs": {"type": "array", "minItems": 1, "items": _ref("OutputRequest"),
                            "description": "several outputs from one decode of the source "
                                           "(instead of dest_path and job_options); at most "
                                           "max_outputs_per_job"}}},
        "OutputRequest": {
            "type": "object", "required": ["destination"], "additionalProperties": False,
            "properties": {
                "destination": {"type": "string", "description":
                                "file:// or s3:// URI; for hls and sprite a prefix ending in "
                                "'/', or the master playlist (.m3u8) or track (.vtt) to write "
                                "in its folder"},
                "kind": {"type": "string", "enum": ["file", "hls", "sprite"],
                         "default": "file"},
                "job_options": {"type": "object",
                                "description": "as the single-output job_options"},
                "preset": {"type": "string", "description":
                           "a preset's name; job_options then holds only its overrides"}}},
        "Output": {
            "type": "object", "description": "what one output of a FINISHED job is",
            "required": ["kind", "uri", "size_bytes"],
            "properties": {
                "kind": {"type": "string", "enum": ["file", "hls", "sprite"]},
                "uri": {"type": "string", "description":
                        "the file, an hls master playlist, or a sprite's first sheet"},
                "size_bytes": {"type": "integer", "description": "every file of the output"},
                "duration_s": {"type": ["number", "null"]},
                "container": {"type": "string"},
                "video_codec": text_or_null, "audio_codec": text_or_null,
                "codecs": {"type": "array", "items": {"type": "string"},
                           "description": "its video and audio codecs, as one list"},
                "width": {"type": ["integer", "null"]}, "height": {"type": ["integer", "null"]},
                "bitrate": {"type": ["integer", "null"], "description": "bits per second"},
                "master_playlist": {"type": "string", "description": "hls only"},
                "renditions": {"type": "integer", "description": "hls only: video renditions"},
                "segments": {"type": "integer",
                             "description": "hls only: segments of every rendition"},
                "variants": {"type": "array", "description": "hls only: each video rendition",
                             "items": {"type": "object"}},
                "dash_manifest": {**text_or_null, "description":
                                  "hls only: the DASH manifest of the same renditions, when "
                                  "asked for (\"dash\": true)"},
                "vtt": {"type": "string", "description": "sprite only: the WebVTT track"},
                "tiles": {"type": "integer", "description": "sprite only"},
                "interval_s": {"type": "number", "description": "sprite only"}}},
        "Job": {
            "type": "object",
            "required": ["id", "state", "state_details", "progress", "attempts", "created_at",
                         "updated_at", "node", "source", "destination", "notify_url",
                         "options", "sent_options", "notify_format",
                         "notifications_given_up"],
            "properties": {
                "id": {"type": "string"},
                "state": {"type": "string", "enum": [s.value for s in JobState]},
                "state_details": {"type": "string"},
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "attempts": {"type": "integer", "minimum": 0},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "node": text_or_null,
                "source": {"type": "string", "description": "credentials removed"},
                "destination": {"type": "string", "description": "credentials removed"},
                "notify_url": text_or_null,
                "options": {"type": "object", "description": "what the encoder runs"},
                "sent_options": {"type": ["object", "null"],
                                 "description": "what the client sent"},
                "outputs": {"type": ["array", "null"], "items": _ref("Output"),
                            "description": "what each output is, once FINISHED"},
                "notify_format": {"type": "string", "enum": ["form", "json"]},
                "notifications_given_up": {
                    "type": "array", "items": _ref("NotificationGivenUp"),
                    "description": "notifications the scheduler stopped retrying, oldest "
                                   "first (listed once the job has ended)"}}},
        "NotificationGivenUp": {
            "type": "object",
            "required": ["state", "changed_at", "given_up_at", "attempts", "reason"],
            "properties": {"state": {"type": "string"},
                           "changed_at": {"type": "string", "format": "date-time",
                                          "description": "when the change (or the re-send "
                                                         "request) was made"},
                           "given_up_at": {"type": "string", "format": "date-time"},
                           "attempts": {"type": "integer", "minimum": 1},
                           "reason": {"type": "string"}}},
        "JobNotification": {
            "type": "object",
            "required": ["id", "state", "state_details", "version", "changed_at", "progress",
                         "attempts", "created_at", "updated_at", "source", "destination",
                         "outputs"],
            "properties": {
                "id": {"type": "string"},
                "state": {"type": "string", "enum": [s.value for s in JobState]},
                "state_details": {"type": "string"},
                "version": {"type": "integer", "description": "with id, tells repeats apart"},
                "changed_at": {"type": "string", "format": "date-time"},
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "attempts": {"type": "integer", "minimum": 0},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "source": {"type": "string", "description": "credentials removed"},
                "destination": {"type": "string", "description": "credentials removed"},
                "outputs": {"type": ["array", "null"], "items": _ref("Output"),
                            "description": "what the job produced; null until it finished"}}},
        "Encoder": {"type": "object",
                    "required": ["id", "state", "active_jobs", "last_report", "started_at"],
                    "properties": {"id": {"type": "string"},
                                   "state": {"type": "string",
                                             "enum": ["working", "idle", "stopped"]},
                                   "active_jobs": {"type": "integer"},
                                   "last_report": {"type": "string", "format": "date-time"},
                                   "started_at": {"type": "string", "format": "date-time"}}},
        "Preset": {"type": "object", "required": ["name", "description", "extension",
                                                  "overrides"],
                   "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                                  "extension": {"type": "string"},
                                  "container": {"type": "string"},
                                  "video": text_or_null, "audio": text_or_null,
                                  "overrides": {"type": "object"}}},
    }


def _paths() -> dict:
    submit = {"post": _submit()}
    plain = {"get": {
        "summary": "The dashboard: a page listing jobs, live (no token needed to load it; "
                   "it asks for one when the API has api_token)",
        "security": [],
        "responses": {"200": {"description": "HTML",
                              "content": {"text/html": {"schema": {"type": "string"}}}}}}}
    return {
        "/job/submit/": submit,
        "/job/submit": submit,
        "/jobs": _list_jobs(),
        "/jobs/": _list_jobs(),
        "/jobs/{job_id}": {"get": {"summary": "One job", "parameters": [_JOB_ID],
                                   "responses": _responses(_JOB_ANSWER, 404, 503)}},
        "/jobs/{job_id}/cancel": _action("Cancel a job that has not ended"),
        "/jobs/{job_id}/retry": _action(
            "Run again a job that ended ERROR, ABANDONED or CANCELLED: same id, back to "
            "PENDING, attempts counted on, the previous ending kept in state_details"),
        "/jobs/{job_id}/notify": {"post": {
            "summary": "Send the job's current state to its notify_url again, through the "
                       "scheduler (retried and given up like any notification)",
            "parameters": [_JOB_ID],
            "responses": {**{k: v for k, v in _responses(_JOB_ANSWER, 404, 409, 503).items()
                             if k != "200"},
                          "202": _ok({"job": _ref("Job")}, ["job"], "queued for sending"),
                          "409": _json(_ref("Error"), "the job has no notify_url")}}},
        "/encoders": {"get": {"summary": "Encoders as they last reported themselves",
                              "responses": _responses(_ok(
                                  {"encoders": {"type": "array", "items": _ref("Encoder")}},
                                  ["encoders"], "every encoder report"), 503)}},
        "/presets": {"get": {"summary": "The catalogue presets a submit may name",
                             "responses": _responses(_ok(
                                 {"presets": {"type": "array", "items": _ref("Preset")}},
                                 ["presets"], "the catalogue"))}},
        "/health": {"get": {
            "summary": "Liveness and the new-job queue (no token needed)", "security": [],
            "responses": {
                "200": _ok({"status": {"const": "ok"}, "queued": {"type": "integer"},
                            "in_flight": {"type": "integer"}},
                           ["status", "queued", "in_flight"], "store and queue answer"),
                "503": _json(_ref("Error"), _ERRORS["503"])}}},
        "/metrics": {"get": {
            "summary": "The whole system's figures (Prometheus text format)",
            "responses": {
                "200": {"description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": _json(_ref("Error"), _ERRORS["401"]),
                "503": _json(_ref("Error"), _ERRORS["503"])}}},
        "/openapi.json": {"get": {
            "summary": "This description (no token needed)", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": {"application/json": {
                                      "schema": {"type": "object"}}}}}}},
        "/": plain,
    }


def describe(version: str) -> dict:
    """The OpenAPI 3.1 document of the API."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "media-nommer", "version": version,
                 "description": "Every answer is JSON with `success`; an error adds "
                                "`error_code` and `message`. With api_token set, send "
                                "`Authorization: Bearer <token>`."},
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": _paths(),
        "webhooks": {"jobNotification": {"post": {
            "summary": "What a job submitted with notify_format json POSTs to its notify_url",
            "parameters": [{"name": "Nommer-Signature", "in": "header", "required": True,
                            "schema": {"type": "string"},
                            "description": "t=<unix time>,v1=<hex HMAC-SHA256 of "
                                           "'<t>.<body>' keyed with webhook_secret>; see "
                                           "docs/api.md"}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("JobNotification")}}},
            "responses": {"200": {"description": "any 2xx (or 303): delivered; anything "
                                                 "else is retried with backoff"}}}}},
    }
