"""/readyz: ready while the backend answers, not ready from the moment shutdown begins."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


async def test_readiness_goes_false_when_shutdown_begins(make_app):
    app = make_app()
    assert await app.readiness_problem() is None
    app.stopping = True  # what serve_connections' on_shutdown sets (trios3.serve)
    assert await app.readiness_problem() == "shutting down"
