"""Serving, composed: the embedded backend (when no ``--backend`` is given), the backend
client, the app and the server (:mod:`trios3.server`), each given its view of the Config.

Everything the server runs lives in one nursery: when serving ends, all of it ends.
"""

from __future__ import annotations

import signal

import trio

from trios3.app import S3Proxy
from trios3.backend import open_backend
from trios3.config import Config
from trios3.embedded import run_seaweedfs
from trios3.server import hypercorn_config, listening_socket, serve_connections


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
        if not config.backend_url:
            config = await nursery.start(run_seaweedfs, config)
        with listening_socket(config.listen, config.send_timeout) as sock:
            async with open_backend(config.backend()) as client:
                app = S3Proxy(config.proxy(), client)
                await serve_connections(
                    app,
                    hypercorn_config(config, sock, config.shutdown_timeout),
                    config.max_connections,
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
        # Serving is over: stop what else the server ran (the embedded backend).
        nursery.cancel_scope.cancel()
