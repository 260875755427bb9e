"""waitress's own error answers as the API's JSON.

waitress answers some requests before the application sees them: a body
over its limit (413), a bad Content-Length or broken chunked encoding
(400), a header section too large (431). It writes those as plain text;
clients of this API parse every answer as JSON, so the channel here makes
them JSON with the same fields as the application's errors.
"""
from __future__ import annotations

import json

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

# waitress's error code -> the API's error_code for it.
_CODES = {400: "BADINPUT", 408: "TIMEOUT", 413: "TOO_LARGE", 431: "TOO_LARGE",
          500: "INTERNAL", 501: "NOT_IMPLEMENTED"}


class JsonErrorTask(ErrorTask):
    def execute(self):
        error = self.request.error
        body = json.dumps({"success": False, "error_code": _CODES.get(error.code, "ERROR"),
                           "message": f"{error.reason.lower()}: {error.body}".rstrip(": ")}
                          ).encode("utf-8")
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


def answer_errors_as_json(server) -> None:
    """Make the waitress `server` (from waitress.create_server) write its own
    error answers as JSON."""
    server.channel_class = JsonErrorChannel
