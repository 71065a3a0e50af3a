"""Serving: hypercorn's trio worker, configured for S3 traffic, and the embedded backend.

Everything the server runs (hypercorn, the backend client, the embedded SeaweedFS) lives in
one nursery: when serving ends, all of it ends.
"""

from __future__ import annotations

import signal

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from trios3.app import ProxySettings, S3Proxy
from trios3.backend import BackendSettings, open_backend
from trios3.config import Config
from trios3.embedded import run_seaweedfs


def hypercorn_config(config: Config) -> HypercornConfig:
    """HTTP/1.1 only, no timeout that cuts a long stream, no body size cap."""
    hc = HypercornConfig()
    hc.bind = [config.listen]
    # Go clients (restic, velero) would pick h2 over TLS, whose flow control hypercorn
    # keeps at 64 KiB per stream; S3 is served over HTTP/1.1.
    hc.alpn_protocols = ["http/1.1"]
    hc.keep_alive_timeout = 75
    hc.read_timeout = None
    hc.graceful_timeout = 30
    hc.h11_max_incomplete_size = 64 * 1024  # request line and headers (metadata up to 2 KB)
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
        async with open_backend(backend) as client:
            app = S3Proxy(proxy_settings(config, backend), client)
            await hypercorn_serve(
                app,
                hypercorn_config(config),
                shutdown_trigger=shutdown_trigger,
                task_status=task_status,
            )
        # Serving is over: stop what else the server ran (the embedded backend).
        nursery.cancel_scope.cancel()
