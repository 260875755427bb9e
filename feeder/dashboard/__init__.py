"""The dashboard: one static page (index.html) whose script polls the API.

No build step and nothing fetched from elsewhere. The page carries no data
itself, so it is served without the token; its script asks for the token
when the API answers 401 and keeps it in sessionStorage (this tab only).
The Content-Security-Policy allows only the page's own script and style
(by hash) and requests to this origin.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import re


@functools.cache
def page() -> bytes:
    return importlib.resources.files(__package__).joinpath("index.html").read_bytes()


def _hashes(tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>".encode(), page(), re.S)
    return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b).digest()).decode() + "'"
                    for b in blocks)


@functools.cache
def headers() -> dict[str, str]:
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src {_hashes('script')}; "
            f"style-src {_hashes('style')}; connect-src 'self'; img-src 'self'; "
            "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
