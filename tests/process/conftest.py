"""Fixtures shared by the process tests."""
from __future__ import annotations

import pytest

from tests.process.test_api import TOKEN, Api, settings_for
from tests.process.test_scheduler import Receiver


@pytest.fixture
def token_api(tmp_path):
    """The API in a thread on its own backends, with api_token = TOKEN."""
    running = Api(settings_for(tmp_path, api_token=TOKEN))
    yield running
    running.stop()


@pytest.fixture
def receiver():
    """An application's notification endpoint on 127.0.0.1 (see Receiver)."""
    built = Receiver()
    yield built
    built.close()
