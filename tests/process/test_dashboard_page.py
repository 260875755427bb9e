"""GET /: the dashboard page as served (its behaviour in a browser is in
tests/system/test_dashboard.py)."""
from __future__ import annotations

import re
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(60)


def test_the_page_loads_without_the_token_and_fetches_nothing_from_elsewhere(token_api):
    with urllib.request.urlopen(token_api.base_url + "/", timeout=10) as answer:
        page = answer.read().decode()

    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<script>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy and "'sha256-" in policy
    assert token_api.request("GET", "/jobs").status == 401
