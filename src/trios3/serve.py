"""Serving, composed: the embedded backend (when no ``--backend`` is given), the backend
client, the app and the server (:mod:`trios3.server`), each given its view of the Config;
and, when an HSM or KMS keeps master keys, the task that has it decrypt them
(:func:`trios3.keystores.keep_keys_fresh`), whose state the app's readiness reads.

Everything the server runs lives in one nursery: when serving ends, all of it ends.

With ``--workers N`` each worker process serves this way too (:mod:`trios3.workers`), on the
listening socket its supervisor made (``listener``), sharing its figures with the other
workers (``share_metrics``).
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial

import trio

from trios3.app import S3Proxy
from trios3.backend import open_backend
from trios3.config import Config
from trios3.embedded import run_seaweedfs
from trios3.keystores import keep_keys_fresh, keys_problem
from trios3.metrics import Metrics
from trios3.server import hypercorn_config, listening_socket, serve_connections


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def serve(
    config: Config,
    *,
    listener: socket.socket | None = None,
    share_metrics: Callable[[Metrics], Awaitable[None]] | None = None,
    shutdown_trigger=_until_signal,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (SIGTERM/SIGINT by default) or cancellation;
    ``task_status`` gets the bound URLs.

    ``listener``: a listening socket to serve instead of making one for ``config.listen``
    (its owner, the caller, closes it). ``share_metrics``: run beside the server with the app's
    metrics, and cancelled once serving has ended, while the backend client is still open.
    """
    async with trio.open_nursery() as nursery:
        if config.held_keys:
            # The key manager is asked once before anything else starts: a key it refuses
            # stops start-up; one it does not answer for leaves the proxy serving, not ready.
            await nursery.start(keep_keys_fresh, config.held_keys, config.keystore())
        if not config.backend_url:
            config = await nursery.start(run_seaweedfs, config)
        with _listening(config, listener) as sock:
            async with open_backend(config.backend()) as client:
                problem = partial(keys_problem, config.held_keys) if config.held_keys else None
                app = S3Proxy(config.proxy(), client, keys_problem=problem)
                async with trio.open_nursery() as beside:
                    if share_metrics is not None:
                        beside.start_soon(share_metrics, app.metrics)
                    await serve_connections(
                        app,
                        hypercorn_config(config, sock, config.shutdown_timeout),
                        config.max_connections,
                        shutdown_trigger=shutdown_trigger,
                        header_timeout=config.header_timeout,
                        on_shutdown=partial(setattr, app, "stopping", True),
                        task_status=task_status,
                    )
                    beside.cancel_scope.cancel()
        # Serving is over: stop what else the server ran (the embedded backend, the keys).
        nursery.cancel_scope.cancel()


@contextmanager
def _listening(config: Config, listener: socket.socket | None) -> Iterator[socket.socket]:
    if listener is not None:
        yield listener
        return
    with listening_socket(config.listen, config.send_timeout) as sock:
        yield sock
