"""Fixtures shared by every test layer: a real SeaweedFS, and trios3 served in front of it
(started by :mod:`harness`, where the helpers the test modules share live too), and the hooks
that make CI fail when a client test could not run."""

from __future__ import annotations

import os

import pytest

from harness import Endpoint, running_proxy, running_seaweedfs, scratch_bucket


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> Endpoint:
    """A real, signature-checking S3 server for the whole session."""
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def proxy(seaweedfs, tmp_path_factory) -> Endpoint:
    """trios3 over plain HTTP."""
    with running_proxy(seaweedfs, tmp_path_factory.mktemp("proxy")) as served:
        yield served.endpoint


@pytest.fixture(scope="session")
def tls_proxy(seaweedfs, tmp_path_factory) -> Endpoint:
    """trios3 over HTTPS with a self-signed certificate (boto3 then sends aws-chunked trailers)."""
    with running_proxy(seaweedfs, tmp_path_factory.mktemp("tlsproxy"), tls=True) as served:
        yield served.endpoint


@pytest.fixture(params=["http", "https"])
def endpoint(request) -> Endpoint:
    """Each test over plain HTTP and over HTTPS (a self-signed certificate). The two proxies
    have master keys of their own: objects are read back through the one that wrote them."""
    return request.getfixturevalue("proxy" if request.param == "http" else "tls_proxy")


@pytest.fixture
def s3(endpoint):
    """A boto3 client of the proxy."""
    return endpoint.client()


@pytest.fixture
def backend(seaweedfs):
    """A boto3 client of the SeaweedFS behind the proxy: what is really stored."""
    return seaweedfs.client()


@pytest.fixture
def bucket(seaweedfs) -> str:
    """A fresh bucket for one test, removed afterwards."""
    yield from scratch_bucket(seaweedfs, "t")


REQUIRE_CLIENTS = "TRIOS3_REQUIRE_CLIENTS"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With TRIOS3_REQUIRE_CLIENTS=1 (as .ci/run sets it) a client test that skips, because
    its client is not installed, fails instead: CI must never pass without running them."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")  # an expected failure ran: not a missing client
        and os.environ.get(REQUIRE_CLIENTS) == "1"
        and item.get_closest_marker("clients") is not None
    ):
        _required(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a client test module skipped as a whole (importorskip and the like)."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get(REQUIRE_CLIENTS) == "1"
        and collector.path.parent.name == "clients"
    ):
        _required(report)


def _required(report) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped, but {REQUIRE_CLIENTS}=1 requires every client: {reason}"
