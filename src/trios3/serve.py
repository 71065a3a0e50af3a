"""Serving: hypercorn's trio worker, configured for S3 traffic, and the embedded backend.

Everything the server runs (hypercorn, the backend client, the embedded SeaweedFS) lives in
one nursery: when serving ends, all of it ends.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from contextlib import contextmanager

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from trios3.app import ProxySettings, S3Proxy
from trios3.backend import BackendSettings, open_backend
from trios3.config import Config
from trios3.embedded import run_seaweedfs


@contextmanager
def listening_socket(listen: str, send_timeout: float):
    """The listening socket, made here so that it carries ``TCP_USER_TIMEOUT``.

    Hypercorn's sends are shielded from cancellation, so a client that stops reading would
    hold its response (and its budget lease) for as long as it keeps the connection open.
    With ``TCP_USER_TIMEOUT`` (inherited by accepted connections) the kernel drops a
    connection whose sent data stays unacknowledged that long; the send then fails and the
    request's scope ends as for any disconnect.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(send_timeout * 1000))
        sock.bind((host, int(port)))
        sock.listen(1024)
        sock.set_inheritable(True)
        yield sock
    finally:
        sock.close()


def hypercorn_config(
    config: Config, sock: socket.socket, shutdown_timeout: float = 30.0
) -> HypercornConfig:
    """HTTP/1.1 only, no timeout that cuts a long stream, no body size cap."""
    hc = HypercornConfig()
    # Hypercorn wraps the descriptor it is given and closes it when it stops: give it a
    # duplicate of its own, so that the socket's owner here can always close the original.
    hc.bind = [f"fd://{os.dup(sock.fileno())}"]
    # Go clients (restic, velero) would pick h2 over TLS, whose flow control hypercorn
    # keeps at 64 KiB per stream; S3 is served over HTTP/1.1.
    hc.alpn_protocols = ["http/1.1"]
    hc.keep_alive_timeout = 75
    hc.read_timeout = None
    # After SIGTERM: no new connections, and requests in flight get this long to finish
    # before they are cancelled (which releases all they hold).
    hc.graceful_timeout = shutdown_timeout
    # Request line and headers: S3 allows 8 KiB of headers (2 KiB of user metadata); this is
    # what a connection that never finishes its headers can make the proxy hold.
    hc.h11_max_incomplete_size = 16 * 1024
    # Body messages hypercorn may queue for a request (64 KiB each) before TCP pushes back:
    # they are read before admission, so they sit outside the budget; keep them few.
    hc.max_app_queue_size = 2
    hc.include_server_header = False
    hc.accesslog = None
    hc.errorlog = None
    if config.tls_cert:
        hc.certfile = config.tls_cert
        hc.keyfile = config.tls_key
    return hc


def proxy_settings(config: Config, backend: BackendSettings) -> ProxySettings:
    return ProxySettings(
        credentials=dict(config.credentials),
        keyring=config.keyring,
        backend=backend,
        memory_budget=config.memory_budget,
        admission_timeout=config.admission_timeout,
        virtual_host_domain=config.virtual_host_domain,
        body_timeout=config.body_timeout,
        max_requests=config.max_requests,
        require_encrypted=config.require_encrypted,
    )


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def serve(
    config: Config, *, shutdown_trigger=_until_signal, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until ``shutdown_trigger`` returns (SIGTERM/SIGINT by default) or cancellation;
    ``task_status`` gets the bound URLs."""
    async with trio.open_nursery() as nursery:
        if config.backend_url:
            backend = BackendSettings(
                config.backend_url,
                config.backend_region,
                config.backend_access_key or "",
                config.backend_secret_key or "",
            )
        else:
            backend = await nursery.start(run_seaweedfs, config.data_dir)
        backend = dataclasses.replace(backend, timeout=config.backend_timeout)
        with listening_socket(config.listen, config.send_timeout) as sock:
            async with open_backend(backend) as client:
                app = S3Proxy(proxy_settings(config, backend), client)
                await hypercorn_serve(
                    app,
                    hypercorn_config(config, sock, config.shutdown_timeout),
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
        # Serving is over: stop what else the server ran (the embedded backend).
        nursery.cancel_scope.cancel()
