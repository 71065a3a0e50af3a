"""``trios3 serve --workers N``: N worker processes on one listening socket, and their supervisor.

One process serves on one core; a worker process per core serves on all of them. The process
the user started becomes the supervisor, and each worker is a whole ``trios3 serve`` of its
own (:func:`trios3.serve.serve` in a ``trio.run`` of its own), so the structured-concurrency
and cancellation guarantees inside a worker are those of a single process, unchanged.

The supervisor:

- runs the embedded SeaweedFS when no ``--backend`` is given (once, for all the workers);
- makes the listening socket once, with ``TCP_USER_TIMEOUT``
  (:func:`trios3.server.listening_socket`), and a private run directory for the workers'
  figures (:class:`SlotFigures`);
- keeps one task per worker slot in its nursery (:meth:`Supervisor._keep_slot`): it starts
  ``python -m trios3.cli serve <the same arguments> --worker-channel FD``, which inherits the
  listening socket and one end of a socket pair of its own, the worker's *channel*; and when the
  worker exits, logs it and starts another after a short backoff (:data:`BACKOFF_FIRST`,
  doubling while workers keep dying young, up to :data:`BACKOFF_MAX`);
- on SIGTERM or SIGINT, cancels the slots: each sends its worker SIGTERM (the worker drains as
  a single process does), waits up to ``--shutdown-timeout`` plus :data:`STOP_GRACE`, then
  kills it. Whatever ends the supervisor's nursery, an error too, stops the workers the same
  way, and it returns only once every worker has exited: a worker never outlives its slot.

Over its channel a worker gets its :class:`Handoff` (its slot, the listening socket's
descriptor, the run directory, and the backend's address and keys, which for the embedded
backend only the supervisor knows: one JSON line, never on a command line or in the
environment), and answers ``ready`` once it serves. The channel is also its lifeline: however
the supervisor ends, even by SIGKILL, the kernel closes its end, and the worker reads
end-of-file and drains as for SIGTERM. (``PR_SET_PDEATHSIG`` would not do: it follows the
thread that forked, and trio forks in a worker thread that it may retire at any time.)

A worker reads the configuration from the same command line and environment as the
supervisor did (its key and credentials files too: a worker restarted after they changed
reads them as changed, as a restarted replica would), then takes its share of it
(:meth:`trios3.config.Config.worker_share`): ``--memory-budget``, ``--max-requests`` and
``--max-connections`` divided by N.

The workers' /metrics: see :class:`SlotFigures`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.utils import repr_socket_addr

from trios3.config import Config
from trios3.embedded import run_seaweedfs
from trios3.metrics import Figures, decode, encode, lasting, merge
from trios3.server import listening_socket

if TYPE_CHECKING:
    from trios3.metrics import Metrics

log = logging.getLogger("trios3")

# The hidden option of ``trios3 serve`` that makes it a worker: the descriptor of its channel.
CHANNEL_OPTION = "--worker-channel"
# Beyond --shutdown-timeout, how long a worker has to exit after SIGTERM before it is killed.
STOP_GRACE = 5.0
# A worker that has not said ``ready`` by then is killed (and counts as having died).
READY_TIMEOUT = 60.0
# The pause before a dead worker's slot gets another: doubled for each worker in a row that died
# within STABLE_SECONDS of its start, up to BACKOFF_MAX.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
STABLE_SECONDS = 30.0
# How often a worker publishes its figures (it does at every scrape and at its exit too).
PUBLISH_INTERVAL = 1.0
_READY = b"ready\n"
_HANDOFF_LIMIT = 64 * 1024


class WorkerFailed(RuntimeError):
    """A worker that could not start: serving stops, with this as the one-line reason."""


@dataclass(frozen=True)
class Handoff:
    """What the supervisor tells a worker over its channel, as one JSON line."""

    slot: int  # 0 .. workers - 1
    listen_fd: int  # the listening socket, inherited
    run_dir: str  # where the workers publish their figures
    backend: tuple[str, str, str, str] = field(repr=False)  # url, region, access and secret key

    def line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Handoff:
        fields = json.loads(line)
        url, region, access_key, secret_key = (str(value) for value in fields["backend"])
        return cls(
            slot=int(fields["slot"]),
            listen_fd=int(fields["listen_fd"]),
            run_dir=str(fields["run_dir"]),
            backend=(url, region, access_key, secret_key),
        )

    def apply(self, config: Config) -> Config:
        """The worker's Config: its share of the supervisor's, with the supervisor's backend
        (the embedded one's address and keys are known only to it)."""
        return config.with_backend(*self.backend).worker_share(self.slot)


# -- the supervisor -----------------------------------------------------------------------------


async def supervise(
    config: Config,
    argv: Sequence[str],
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``config.workers`` workers until ``shutdown_trigger`` returns (by default: SIGTERM
    or SIGINT; one that comes during start-up is kept and acted on once the workers serve),
    then stop them all. ``argv`` is the ``serve`` command line the workers run; ``task_status``
    gets the bound URLs once every worker serves."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        if shutdown_trigger is None:
            shutdown_trigger = partial(_first_signal, signals)
        async with trio.open_nursery() as nursery:
            if not config.backend_url:
                config = await nursery.start(run_seaweedfs, config)
            with (
                listening_socket(config.listen, config.send_timeout) as sock,
                _run_directory() as run_dir,
            ):
                supervisor = Supervisor(config, argv, sock, run_dir)
                await supervisor.run(shutdown_trigger=shutdown_trigger, task_status=task_status)
            # The workers are gone: stop what else the supervisor ran (the embedded backend).
            nursery.cancel_scope.cancel()


async def _first_signal(signals) -> None:
    async for _ in signals:
        return


@contextlib.contextmanager
def _run_directory() -> Iterator[Path]:
    """A directory only this user can enter (mkdtemp makes it 0700), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="trios3-workers-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Supervisor:
    """The worker slots of one ``trios3 serve --workers N`` and the processes that fill them."""

    def __init__(self, config: Config, argv: Sequence[str], sock: socket.socket, run_dir: Path):
        self.config = config
        self._command = [sys.executable, "-m", "trios3.cli", *argv]
        self._sock = sock
        self.run_dir = run_dir
        self._started: set[int] = set()  # slots whose first worker has said ready
        self._all_started = trio.Event()
        self.pids: dict[int, int] = {}  # slot -> pid of its worker now

    @property
    def binds(self) -> list[str]:
        scheme = "https" if self.config.tls_cert else "http"
        return [f"{scheme}://{repr_socket_addr(self._sock.family, self._sock.getsockname())}"]

    async def run(self, *, shutdown_trigger: Callable[[], Awaitable[object]], task_status) -> None:
        """Keep every slot filled until ``shutdown_trigger`` returns, then stop the workers."""
        async with trio.open_nursery() as slots:
            for slot in range(self.config.workers):
                slots.start_soon(self._keep_slot, slot)
            await self._all_started.wait()
            log.info(
                "%d workers serving: pids %s",
                self.config.workers,
                " ".join(str(self.pids[slot]) for slot in sorted(self.pids)),
            )
            task_status.started(self.binds)
            await shutdown_trigger()
            log.info("stopping %d workers", self.config.workers)
            slots.cancel_scope.cancel()

    async def _keep_slot(self, slot: int) -> None:
        """Run a worker in ``slot``, and another whenever one exits, until cancelled. A slot
        whose first worker never got to serve ends serving: it is a start-up failure."""
        dying_young = 0
        while True:
            began = trio.current_time()
            pid, status = await self._run_worker(slot)
            lived = trio.current_time() - began
            if slot not in self._started:
                raise WorkerFailed(f"worker {slot} {_describe(status)} before it served")
            dying_young = dying_young + 1 if lived < STABLE_SECONDS else 0
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, dying_young - 1))
            log.warning(
                "worker %d (pid %d) %s after %.1f s; starting another in %.1f s",
                slot,
                pid,
                _describe(status),
                lived,
                delay,
            )
            await trio.sleep(delay)

    async def _run_worker(self, slot: int) -> tuple[int, int]:
        """Start a worker in ``slot`` and return (its pid, its exit status) once it exits.
        Cancelled, it stops the worker first (:meth:`_stop`), shielded: the worker never
        outlives this call."""
        ours, theirs = socket.socketpair()
        channel = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        with channel.socket, theirs:
            handoff = Handoff(slot, self._sock.fileno(), str(self.run_dir), self._backend())
            await channel.send_all(handoff.line())  # read by the worker once it runs
            process = await trio.lowlevel.open_process(
                [*self._command, CHANNEL_OPTION, str(theirs.fileno())],
                pass_fds=(theirs.fileno(), self._sock.fileno()),
            )
            theirs.close()  # only the worker holds its end now: its exit ends the channel
            self.pids[slot] = process.pid
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._await_ready, slot, process, channel)
                    await process.wait()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop(slot, process)
                SlotFigures.mark_gone(self.run_dir, slot)
        return process.pid, process.returncode

    def _backend(self) -> tuple[str, str, str, str]:
        """The backend the workers use: the one given (they would find it themselves) or the
        embedded one this supervisor runs (whose address and keys only it knows)."""
        config = self.config
        assert config.backend_url is not None
        return (
            config.backend_url,
            config.backend_region,
            config.backend_access_key or "",
            config.backend_secret_key or "",
        )

    async def _await_ready(self, slot: int, process: trio.Process, channel) -> None:
        with trio.move_on_after(READY_TIMEOUT):
            said = b""
            while not said.endswith(b"\n"):
                try:
                    chunk = await channel.receive_some(len(_READY))
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    return  # it is exiting: _keep_slot sees to that
                said += chunk
            if said == _READY:
                log.info("worker %d (pid %d) serving", slot, process.pid)
                self._started.add(slot)
                if len(self._started) == self.config.workers:
                    self._all_started.set()
                return
        log.error(
            "worker %d (pid %d) did not start within %.0f s", slot, process.pid, READY_TIMEOUT
        )
        process.kill()

    async def _stop(self, slot: int, process: trio.Process) -> None:
        """SIGTERM, up to ``--shutdown-timeout`` plus STOP_GRACE to drain, then SIGKILL."""
        if process.returncode is not None:
            return
        process.terminate()
        with trio.move_on_after(self.config.shutdown_timeout + STOP_GRACE):
            await process.wait()
            return
        log.warning(
            "worker %d (pid %d) still running %.0f s after SIGTERM: killing it",
            slot,
            process.pid,
            self.config.shutdown_timeout + STOP_GRACE,
        )
        process.kill()
        await process.wait()


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


# -- a worker -------------------------------------------------------------------------------------


async def serve_worker(config: Config, channel_fd: int) -> None:
    """Serve as one worker of a supervisor: read the :class:`Handoff` from the channel, serve
    the inherited socket with this worker's share of ``config``, tell the supervisor ``ready``,
    and drain on SIGTERM or SIGINT, or when the supervisor has gone (the channel's end)."""
    from trios3.serve import serve  # the app: the supervisor never imports it

    channel = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=channel_fd)))
    try:
        handoff = Handoff.from_line(await _receive_line(channel))
        config = handoff.apply(config)
        with socket.socket(fileno=handoff.listen_fd) as listener:
            figures = SlotFigures(Path(handoff.run_dir), handoff.slot)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_told_to_stop, channel, stop)

                async def serving(task_status=trio.TASK_STATUS_IGNORED) -> None:
                    await serve(
                        config,
                        listener=listener,
                        share_metrics=figures.publish_while_serving,
                        shutdown_trigger=stop.wait,
                        task_status=task_status,
                    )
                    nursery.cancel_scope.cancel()  # served: stop watching

                await nursery.start(serving)
                try:
                    await channel.send_all(_READY)
                except trio.BrokenResourceError:
                    stop.set()  # the supervisor has gone already
    finally:
        channel.socket.close()


async def _receive_line(channel) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await channel.receive_some(4096)
        if not chunk or len(line) > _HANDOFF_LIMIT:
            raise WorkerFailed("the supervisor sent no handoff")
        line += chunk
    return line


async def _until_told_to_stop(channel, stop: trio.Event) -> None:
    """Set ``stop`` at the first SIGTERM or SIGINT, or when the supervisor's end of the channel
    closes; until cancelled, absorb further signals (the default action of a second SIGTERM
    would kill a worker in the middle of draining)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def signalled() -> None:
                async for _ in signals:
                    stop.set()

            nursery.start_soon(signalled)
            with contextlib.suppress(trio.BrokenResourceError):
                while await channel.receive_some(4096):
                    pass  # the supervisor sends nothing more
            if not stop.is_set():
                log.warning("the supervisor has gone: stopping")
                stop.set()


# -- the workers' figures ---------------------------------------------------------------------


class SlotFigures:
    """How /metrics in any worker answers for all of them: one file per worker slot.

    Each worker publishes its figures (:mod:`trios3.metrics`: counters, histogram buckets,
    gauges) to ``worker-<slot>.json`` in the supervisor's run directory, replaced atomically,
    every :data:`PUBLISH_INTERVAL`, at every scrape and when it stops. A scrape publishes this
    worker's figures, then sums every slot's file: every figure ever shown is in a file and a
    file only grows, so the counters a scraper sees never go back, whichever worker it
    reaches. The other workers' figures are up to :data:`PUBLISH_INTERVAL` old.

    A worker that dies leaves its file behind: the supervisor marks it gone (:meth:`mark_gone`)
    and from then on only its counters and histograms count (its gauges, such as the requests in
    flight, went with it); the next worker in its slot carries those on, so they never go back
    either. Counts a killed worker made since it last published are lost. ``trios3_workers`` is
    the number of slots whose worker is serving.

    The files are small (a few tens of KiB) and read and written on the event loop's thread, a
    fraction of a millisecond per scrape and per second; the request path never touches them.
    """

    def __init__(self, run_dir: Path, slot: int) -> None:
        self._dir = run_dir
        self._slot = slot
        self._path = run_dir / f"worker-{slot}.json"
        previous = _read(self._path)
        # What an earlier worker of this slot counted: carried on.
        self._carried: Figures = lasting(decode(previous["figures"])) if previous else {}

    def publish(self, own: Figures) -> Figures:
        """Write this worker's figures (with what it carries on); return them."""
        mine = merge([own, self._carried])
        document = {"pid": os.getpid(), "alive": True, "figures": encode(mine)}
        _write(self._path, document)
        return mine

    def total(self, own: Figures) -> tuple[Figures, int]:
        """Publish ``own`` and sum every slot's figures (:class:`trios3.metrics.FigurePool`)."""
        every = [self.publish(own)]
        workers = 1
        for path in sorted(self._dir.glob("worker-*.json")):
            if path == self._path:
                continue
            document = _read(path)
            if document is None:
                continue
            figures = decode(document["figures"])
            if document["alive"]:
                workers += 1
                every.append(figures)
            else:
                every.append(lasting(figures))
        return merge(every), workers

    async def publish_while_serving(self, metrics: Metrics) -> None:
        """Share ``metrics`` with the other workers until cancelled, publishing once more at
        the end (with the requests drained since)."""
        metrics.share(self)
        try:
            while True:
                self.publish(metrics.figures())
                await trio.sleep(PUBLISH_INTERVAL)
        finally:
            self.publish(metrics.figures())

    @staticmethod
    def mark_gone(run_dir: Path, slot: int) -> None:
        """The supervisor's note that the worker of ``slot`` has exited."""
        path = run_dir / f"worker-{slot}.json"
        document = _read(path)
        if document is not None:
            document["alive"] = False
            _write(path, document, suffix=".gone")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read the figures in %s: %s", path, exc)
        return None


def _write(path: Path, document: dict, *, suffix: str = "") -> None:
    temporary = path.with_name(f".{path.name}{suffix}.tmp")
    temporary.write_text(json.dumps(document, separators=(",", ":")))
    os.replace(temporary, path)
