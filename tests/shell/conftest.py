"""Fixtures of the shell tests that drive the app in-process (:mod:`inprocess`)."""

from __future__ import annotations

from functools import partial

import pytest
from inprocess import backend_settings, proxy_app

from trios3.backend import open_backend


@pytest.fixture
async def backend(seaweedfs):
    """The proxy's own backend client of the session's SeaweedFS (here, not a boto3 client)."""
    async with open_backend(backend_settings(seaweedfs.url, seaweedfs)) as client:
        yield client


@pytest.fixture
def make_app(backend):
    """Apps in front of ``backend``: ``make_app(**settings)``."""
    return partial(proxy_app, backend)
