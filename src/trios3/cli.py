"""The ``trios3`` command: ``serve``, ``keygen``, ``rewrap`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from functools import partial
from pathlib import Path

import trio

from trios3.config import (
    ConfigError,
    add_key,
    add_keystore_options,
    add_serve_options,
    add_tool_options,
    build_config,
    keystore_settings,
    load_keyring,
    promote_key,
    tool_config,
    write_key_file,
)
from trios3.embedded import EmbeddedUnavailable, find_weed
from trios3.keystores import (
    KeyManagerError,
    ManagedKey,
    describe_key,
    keep_keys_fresh,
    seal_intermediate,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trios3", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the encrypting S3 proxy")
    add_serve_options(serve, os.environ)
    # Internal: what makes ``serve`` one worker of a supervisor (trios3.workers).
    serve.add_argument("--worker-channel", type=int, help=argparse.SUPPRESS)
    keygen = commands.add_parser(
        "keygen", help="write a new master key file (mode 0600), or add a key to one"
    )
    keygen.add_argument("path", help="the key file to create (or to add to)")
    added = keygen.add_mutually_exclusive_group()
    added.add_argument(
        "--rotate",
        action="store_true",
        help="add a new primary key at the top of an existing key file (old keys stay)",
    )
    added.add_argument(
        "--add",
        action="store_true",
        help="add a new key at the end of an existing key file: it decrypts, but is not used "
        "for new objects until --promote (roll it out to every replica first)",
    )
    added.add_argument("--promote", metavar="KEY_ID", help="make this key of the file primary")
    kept = keygen.add_mutually_exclusive_group()
    kept.add_argument(
        "--pkcs11",
        action="store_true",
        help="the new key is kept by an HSM: written as a pkcs11: line, encrypted by the HSM "
        "key --pkcs11-key-label, which never leaves the token",
    )
    kept.add_argument(
        "--kmip",
        action="store_true",
        help="the new key is kept by a KMS: written as a kmip: line, encrypted by the KMIP key "
        "--kmip-key-id",
    )
    keygen.add_argument(
        "--pkcs11-key-label",
        default=os.environ.get("TRIOS3_PKCS11_KEY_LABEL"),
        help="label of the HSM's AES key [TRIOS3_PKCS11_KEY_LABEL]",
    )
    keygen.add_argument(
        "--kmip-key-id",
        default=os.environ.get("TRIOS3_KMIP_KEY_ID"),
        help="unique identifier of the KMS's AES key [TRIOS3_KMIP_KEY_ID]",
    )
    keygen.add_argument(
        "--create-key",
        action="store_true",
        help="with --pkcs11 or --kmip: create that AES-256 key first (for encrypt and decrypt "
        "only; on a token, sensitive and never extractable), and print its name",
    )
    add_keystore_options(keygen, os.environ)
    rewrap = commands.add_parser(
        "rewrap",
        help="move objects to the primary key by re-wrapping their data keys (and seal an "
        "md5chksum left in the clear)",
    )
    rewrap.add_argument("url", help="s3://BUCKET[/PREFIX] at the backend")
    rewrap.add_argument("--dry-run", action="store_true", help="count, change nothing")
    rewrap.add_argument("--start-after", help="resume after this key")
    rewrap.add_argument("--max-objects", type=int, help="stop after this many objects")
    add_tool_options(rewrap, os.environ)
    inspect = commands.add_parser("inspect", help="show what trios3 sees of a stored object")
    inspect.add_argument("url", help="s3://BUCKET/KEY at the backend")
    add_tool_options(inspect, os.environ)
    return parser


class JsonLines(logging.Formatter):
    """One JSON object per log line; a request's line carries its fields as keys (with
    ``pid``: the process's id too, which with --workers says which worker)."""

    def __init__(self, *, pid: bool = False) -> None:
        super().__init__()
        self._pid = pid

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._pid:
            line["pid"] = record.process
        line.update(getattr(record, "request", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def _fail(message: str) -> int:
    print(f"trios3: error: {message}", file=sys.stderr)
    return 2


def _banner(config, binds) -> str:
    access, credential = next(iter(config.credentials.items()))
    secret = getattr(credential, "secret_access_key", credential)
    endpoint = binds[0] if binds else config.listen
    lines = [f"trios3 serving S3 on {endpoint}"]
    if not config.backend_url:
        lines.append(f"backend: embedded SeaweedFS, data in {config.data_dir}")
        lines += [f"created {item}" for item in config.generated]
        lines += [
            "use these credentials:",
            f"  AWS_ACCESS_KEY_ID={access}",
            f"  AWS_SECRET_ACCESS_KEY={secret}",
            f"  aws --endpoint-url {endpoint} s3 ls",
        ]
    else:
        lines.append(f"backend: {config.backend_url}")
    if config.held_keys:
        keystore = config.keystore()
        kinds = sorted({key.managed.manager for key in config.held_keys})
        lines.append(
            f"master keys: {len(config.held_keys)} of {len(config.keyring.key_ids)} kept by the "
            + " and the ".join(keystore.describe(kind) for kind in kinds)
            + f", decrypted there every {keystore.cache_seconds / 2:g} s and kept "
            f"{keystore.cache_seconds:g} s (--kms-cache-seconds)"
        )
    if config.require_encrypted:
        lines.append("objects not encrypted by trios3: refused (--require-encrypted)")
    else:
        lines.append(
            "objects not encrypted by trios3: served as they are (migration mode; "
            "--require-encrypted refuses them)"
        )
    if not config.backend_checksum:
        lines.append("uploads: not verified by the backend (--backend-checksum off)")
    if config.workers > 1:
        lines.append(f"workers: {config.workers}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        return _keygen(args)
    if args.command in ("rewrap", "inspect"):
        return _tool(args)
    try:
        config = build_config(args, os.environ)
        if not config.backend_url:
            find_weed()
    except (ConfigError, EmbeddedUnavailable) as exc:
        return _fail(str(exc))
    handler = logging.StreamHandler()
    workers = config.workers > 1  # every line says which process wrote it
    if config.log_format == "json":
        handler.setFormatter(JsonLines(pid=workers))
    else:
        name = "%(name)s[%(process)d]" if workers else "%(name)s"
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name} %(message)s"))
    logging.basicConfig(level=config.log_level, handlers=[handler])

    async def run() -> None:
        if args.worker_channel is not None:  # one worker of a supervisor: no banner
            from trios3.workers import serve_worker

            await serve_worker(config, args.worker_channel)
            return
        async with trio.open_nursery() as nursery:
            if workers:  # the supervisor serves nothing itself: it never imports the app
                from trios3.workers import supervise

                binds = await nursery.start(supervise, config, argv)
            else:
                from trios3.serve import serve

                binds = await nursery.start(serve, config)
            print(_banner(config, binds), flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    except (OSError, RuntimeError, BaseExceptionGroup) as error:
        # Start-up failures (a port in use, an embedded backend that would not start) come
        # out of the server's nurseries as groups: report the first of them in one line.
        cause = _first_startup_error(error)
        if cause is None:
            raise
        return _fail(f"cannot serve: {cause}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    """``keygen``: a new key file, or a key added to one or promoted in it."""
    try:
        managed = None
        if args.pkcs11 or args.kmip:
            if args.promote:
                return _fail("--promote takes no --pkcs11 or --kmip")
            # What the file allows is checked before the HSM or KMS is asked for anything.
            if args.rotate or args.add:
                load_keyring(args.path, {})
            elif Path(args.path).exists():
                return _fail(f"{args.path} already exists; refusing to overwrite a key")
            managed = _kept_key(args)
        elif args.create_key:
            return _fail("--create-key goes with --pkcs11 or --kmip")
        kept = f" (encrypted by the {managed.describe()})" if managed else ""
        if args.rotate or args.add:
            key_id = add_key(Path(args.path), primary=args.rotate, managed=managed)
            role = "primary" if args.rotate else "secondary"
            print(f"added a new {role} master key {key_id}{kept} to {args.path}")
        elif args.promote:
            promote_key(Path(args.path), args.promote)
            print(f"master key {args.promote} is now the primary key in {args.path}")
        else:
            key_id = write_key_file(Path(args.path), managed)
            print(f"wrote a new master key {key_id}{kept} to {args.path}")
    except (ConfigError, KeyManagerError) as exc:
        return _fail(str(exc))
    return 0


def _kept_key(args: argparse.Namespace) -> ManagedKey:
    """A new intermediate key that the HSM or KMS of ``args`` encrypted (blocking calls)."""
    kind = "pkcs11" if args.pkcs11 else "kmip"
    manager = keystore_settings(args, os.environ, kind).manager(kind)
    flag, name = (
        ("--pkcs11-key-label", args.pkcs11_key_label)
        if kind == "pkcs11"
        else ("--kmip-key-id", args.kmip_key_id)
    )
    if args.create_key and kind == "kmip" and name:
        raise ConfigError("--kmip-key-id: the KMIP server names a key it creates")
    if not (name or args.create_key):
        raise ConfigError(f"{flag}: which key of the {kind} key manager (or --create-key)")
    try:
        if args.create_key:
            name = manager.create_key(name)
            print(f"created the {describe_key(kind, name)}")
        for warning in manager.warnings(name):
            print(f"trios3: warning: {warning}", file=sys.stderr)
        return seal_intermediate(manager, name)
    except KeyManagerError as exc:
        raise type(exc)(f"{describe_key(kind, name or '(new)')}: {exc}") from None


def _tool(args: argparse.Namespace) -> int:
    """``rewrap`` and ``inspect``: straight against the backend, no body decrypted."""
    from trios3 import maintenance
    from trios3.backend import open_backend

    try:
        config = tool_config(args, os.environ, keys_used=args.command == "rewrap")
        settings, keyring = config.backend(), config.keyring
        bucket, key = maintenance.parse_s3_url(args.url)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    if args.command == "inspect" and not key:
        return _fail("inspect needs s3://BUCKET/KEY")

    async def run() -> int:
        """With keys an HSM or KMS keeps, rewrap first has it decrypt them, and keeps them
        fresh while it runs (a task beside the work, cancelled when it is done)."""
        async with trio.open_nursery() as nursery:
            if args.command == "rewrap" and config.held_keys:
                keep = partial(keep_keys_fresh, config.held_keys, config.keystore(), strict=True)
                await nursery.start(keep)
            status = await work()
            nursery.cancel_scope.cancel()
        return status

    async def work() -> int:
        async with open_backend(settings) as backend:
            if args.command == "inspect":
                print("\n".join(await maintenance.inspect(backend, keyring, bucket, key)))
                return 0
            summary = await maintenance.rewrap(
                backend,
                keyring,
                bucket,
                key,
                dry_run=args.dry_run,
                start_after=args.start_after,
                max_objects=args.max_objects,
                progress=lambda s: maintenance.print_progress(s, args.dry_run),
            )
        print(file=sys.stderr)
        print(("dry run: " if args.dry_run else "") + summary.line(args.dry_run))
        for failed_key, reason in summary.failed:
            print(f"failed: {failed_key}: {reason}")
        if summary.last_key is not None:
            print(f"last key: {summary.last_key} (resume with --start-after)")
        return 1 if summary.failed else 0

    try:
        return trio.run(run)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, as for serve
        while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return _fail(f"{args.command}: {exc}")


def _first_startup_error(error: BaseException) -> str | None:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_startup_error(inner)
            if found:
                return found
        return None
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if isinstance(error, RuntimeError | trio.TooSlowError):
        return str(error) or type(error).__name__
    return None


if __name__ == "__main__":
    sys.exit(main())
