"""Configuration: every option from flags or TRIOS3_* variables, one clear line on errors."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import stat
import subprocess
import sys

import pytest

from trios3.cli import _parser
from trios3.config import (
    BackendSettings,
    Config,
    ConfigError,
    ProxySettings,
    add_serve_options,
    add_tool_options,
    build_config,
    parse_size,
    tool_settings,
    write_key_file,
)
from trios3.core.keys import Keyring, MasterKey

KEY = base64.b64encode(bytes(range(32))).decode()
BASE_ENV = {
    "TRIOS3_MASTER_KEY": KEY,
    "TRIOS3_ACCESS_KEY_ID": "client",
    "TRIOS3_SECRET_ACCESS_KEY": "secret",
    "TRIOS3_BACKEND_ACCESS_KEY_ID": "backend",
    "TRIOS3_BACKEND_SECRET_ACCESS_KEY": "backendsecret",
}


def secrets_of(credentials) -> dict[str, str]:
    """Access key id -> secret (credentials are Credentials with a scope since tenants)."""
    return {access: c.secret_access_key for access, c in credentials.items()}


def config_from(argv, env):
    parser = argparse.ArgumentParser()
    add_serve_options(parser, env)  # the parser reads the environment as it is built
    return build_config(parser.parse_args(argv), env)


def test_flags_and_environment_give_the_same_config():
    from_flags = config_from(
        [
            "--backend",
            "http://s3.local:9000",
            "--listen",
            "0.0.0.0:9999",
            "--memory-budget",
            "8MiB",
        ],
        BASE_ENV,
    )
    env = {
        **BASE_ENV,
        "TRIOS3_BACKEND": "http://s3.local:9000",
        "TRIOS3_LISTEN": "0.0.0.0:9999",
        "TRIOS3_MEMORY_BUDGET": "8MiB",
    }
    from_env = config_from([], env)
    for config in (from_flags, from_env):
        assert config.listen == "0.0.0.0:9999"
        assert config.backend_url == "http://s3.local:9000"
        assert config.memory_budget == 8 * 1024 * 1024
        assert secrets_of(config.credentials) == {"client": "secret"}
        assert config.keyring.primary.key_id == MasterKey.from_base64(KEY).key_id


@pytest.mark.parametrize(
    ("argv", "env_change", "message"),
    [
        (["--listen", "nonsense"], {}, "--listen"),
        (["--memory-budget", "lots"], {}, "--memory-budget"),
        (["--tls-cert", "/nonexistent"], {}, "--tls-cert"),
        ([], {"TRIOS3_MASTER_KEY": "not base64!"}, "TRIOS3_MASTER_KEY"),
        ([], {"TRIOS3_MASTER_KEY": base64.b64encode(b"short").decode()}, "32 bytes"),
        ([], {"TRIOS3_BACKEND_SECRET_ACCESS_KEY": ""}, "TRIOS3_BACKEND_SECRET_ACCESS_KEY"),
        ([], {"TRIOS3_SECRET_ACCESS_KEY": ""}, "TRIOS3_ACCESS_KEY_ID"),
        (["--backend", "ftp://x"], {}, "--backend"),
        (["--credentials", "/nonexistent.toml"], {}, "--credentials"),
        (["--backend-ca-bundle", "/nonexistent.pem"], {}, "--backend-ca-bundle: no such file"),
        ([], {"TRIOS3_BACKEND_CA_BUNDLE": "/nonexistent.pem"}, "--backend-ca-bundle"),
        (["--workers", "0"], {}, "--workers: expected a positive number"),
        (["--workers", "two"], {}, "--workers"),
        (["--workers", "4", "--max-requests", "3"], {}, "a share of --max-requests"),
        ([], {"TRIOS3_WORKERS": "8", "TRIOS3_MAX_CONNECTIONS": "4"}, "--max-connections"),
    ],
)
def test_invalid_configuration_is_one_clear_error(argv, env_change, message):
    env = {**BASE_ENV, **env_change}
    env = {k: v for k, v in env.items() if v}
    if "--backend" not in argv:
        argv = ["--backend", "http://s3.local:9000", *argv]
    with pytest.raises(ConfigError) as caught:
        config_from(argv, env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_credentials_file_holds_many_pairs(tmp_path):
    path = tmp_path / "creds.toml"
    path.write_text(
        '[[credentials]]\naccess_key_id = "a"\nsecret_access_key = "sa"\n'
        '[[credentials]]\naccess_key_id = "b"\nsecret_access_key = "sb"\n'
    )
    env = {
        k: v for k, v in BASE_ENV.items() if "TRIOS3_ACCESS" not in k and "TRIOS3_SECRET" not in k
    }
    config = config_from(["--backend", "http://x:1", "--credentials", str(path)], env)
    assert secrets_of(config.credentials) == {"a": "sa", "b": "sb"}
    assert all(c.scope.admin and c.scope.buckets is None for c in config.credentials.values())


def test_sizes_accept_binary_and_decimal_units():
    assert parse_size("64MiB", "m") == 64 * 1024**2
    assert parse_size("1g", "m") == 1024**3
    assert parse_size("1000", "m") == 1000
    with pytest.raises(ConfigError):
        parse_size("0", "m")


def test_keygen_writes_a_private_key_and_never_overwrites(tmp_path):
    path = tmp_path / "master.key"
    write_key_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    MasterKey.from_base64(path.read_text())
    with pytest.raises(ConfigError):
        write_key_file(path)


def test_embedded_mode_creates_key_and_credentials_once(tmp_path):
    env = {}
    first = config_from(["--data-dir", str(tmp_path)], env)
    second = config_from(["--data-dir", str(tmp_path)], env)
    assert first.backend_url is None
    assert len(first.generated) == 2 and second.generated == ()
    assert first.credentials == second.credentials
    assert first.keyring.primary.key_id == second.keyring.primary.key_id


def test_serve_fails_with_one_line_and_no_traceback():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOS3_")}
    result = subprocess.run(
        [sys.executable, "-m", "trios3.cli", "serve", "--backend", "http://127.0.0.1:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "TRIOS3_BACKEND_ACCESS_KEY_ID" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_parser_knows_every_documented_option():
    text = _parser().format_help()
    assert "serve" in text and "keygen" in text


def test_a_port_in_use_is_one_clear_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOS3_")}
        env.update(BASE_ENV)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trios3.cli",
                "serve",
                "--backend",
                "http://127.0.0.1:1",
                "--listen",
                f"127.0.0.1:{port}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_require_encrypted_is_a_flag_and_a_variable():
    assert config_from(["--backend", "http://x:1"], BASE_ENV).require_encrypted is False
    assert config_from(
        ["--backend", "http://x:1", "--require-encrypted"], BASE_ENV
    ).require_encrypted
    env = {**BASE_ENV, "TRIOS3_REQUIRE_ENCRYPTED": "1"}
    assert config_from(["--backend", "http://x:1"], env).require_encrypted is True


def test_a_key_file_holds_a_keyring_whose_first_key_is_primary(tmp_path):
    from trios3.config import add_key, load_keyring, promote_key

    path = tmp_path / "keys"
    first_id = write_key_file(path)
    assert load_keyring(str(path), {}).key_ids == (first_id,)
    second_id = add_key(path, primary=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keyring = load_keyring(str(path), {})
    assert keyring.primary.key_id == second_id
    assert keyring.key_ids == (second_id, first_id)
    # Comments and blank lines are ignored; the variable takes commas or spaces.
    lines = path.read_text().split()
    path.write_text(f"# rotated\n{lines[0]}  # new\n\n{lines[1]}\n")
    assert load_keyring(str(path), {}).key_ids == (second_id, first_id)
    from_env = load_keyring(None, {"TRIOS3_MASTER_KEY": f"{lines[0]}, {lines[1]}"})
    assert from_env.key_ids == (second_id, first_id)
    # Two-step rotation: a secondary key first, promoted once every replica has it.
    third_id = add_key(path, primary=False)
    assert load_keyring(str(path), {}).key_ids == (second_id, first_id, third_id)
    promote_key(path, third_id)
    assert load_keyring(str(path), {}).key_ids == (third_id, second_id, first_id)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ConfigError):
        promote_key(path, "0" * 16)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no master key"),
        ("# only a comment\n", "no master key"),
        ("not-base64!\n", "key 1: master key is not valid base64"),
        (f"{KEY}\n{KEY}\n", "listed twice"),
        (base64.b64encode(b"short").decode(), "key 1: master key must be 32 bytes"),
    ],
)
def test_bad_key_files_are_one_clear_line_that_never_shows_a_key(tmp_path, text, expected):
    from trios3.config import load_keyring

    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_keyring(str(path), {})
    assert expected in str(info.value)
    assert KEY not in str(info.value)


def test_offline_tools_need_a_backend_and_keys(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOS3_")}
    for args, expected in (
        (["inspect", "s3://b/k"], "--backend"),
        (["rewrap", "s3://b", "--backend", "http://127.0.0.1:1"], "TRIOS3_BACKEND_ACCESS_KEY_ID"),
        (["rewrap", "b/k", "--backend", "http://127.0.0.1:1"], "TRIOS3_BACKEND_ACCESS_KEY_ID"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "trios3.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
        assert expected in result.stderr


# -- one typed Config: the command line derived from its fields, a view for each part -------


def test_a_command_line_without_options_gives_the_configs_own_defaults():
    given = config_from(["--backend", "http://x:1"], BASE_ENV)
    defaults = Config()
    derived = {"backend_url", "backend_access_key", "backend_secret_key", "credentials", "keyring"}
    for field in dataclasses.fields(Config):
        if field.name not in derived:
            assert getattr(given, field.name) == getattr(defaults, field.name), field.name
    assert defaults.memory_budget == 64 * 1024**2
    assert defaults.body_timeout == 60.0


def test_help_shows_each_options_variable_and_default():
    serve = argparse.ArgumentParser()
    add_serve_options(serve, {"TRIOS3_MEMORY_BUDGET": "1MiB"})  # the help shows the default
    text = " ".join(serve.format_help().split())
    for expected in (
        "--listen LISTEN HOST:PORT to serve S3 on [TRIOS3_LISTEN; default 127.0.0.1:8080]",
        "[TRIOS3_MEMORY_BUDGET; default 64MiB]",
        "[TRIOS3_BODY_TIMEOUT; default 60]",
        "--require-encrypted refuse objects the proxy did not encrypt instead of serving them "
        "[TRIOS3_REQUIRE_ENCRYPTED=1]",
        "--log-format LOG_FORMAT text or json (one JSON object per line) "
        "[TRIOS3_LOG_FORMAT; default text]",
    ):
        assert expected in text
    assert "BACKEND_ACCESS_KEY" not in text  # secrets are variables only, never flags
    tool = argparse.ArgumentParser()
    add_tool_options(tool, {})
    flags = [a.option_strings[0] for a in tool._actions if a.option_strings[0] != "-h"]
    assert flags == [
        "--backend",
        "--backend-region",
        "--backend-ca-bundle",
        "--backend-checksum",
        "--key-file",
        "--pkcs11-module",
        "--pkcs11-token-label",
        "--kmip-host",
        "--kmip-port",
        "--kmip-cert",
        "--kmip-key",
        "--kmip-ca",
        "--kms-cache-seconds",
        "--kms-timeout",
        "--backend-timeout",
    ]


def test_logging_options_are_one_clear_line():
    for argv, message in (
        (
            ["--log-level", "loud"],
            "--log-level: expected DEBUG, INFO, WARNING or ERROR, got 'loud'",
        ),
        (["--log-format", "xml"], "--log-format: expected text or json, got 'xml'"),
    ):
        with pytest.raises(ConfigError) as caught:
            config_from(["--backend", "http://x:1", *argv], BASE_ENV)
        assert str(caught.value) == message
    assert config_from(["--backend", "http://x:1", "--log-level", "debug"], BASE_ENV).log_level == (
        "DEBUG"
    )


def test_each_part_gets_its_view_of_the_config():
    config = config_from(
        ["--backend", "http://s3.local:9000", "--max-requests", "10", "--backend-timeout", "7"],
        {**BASE_ENV, "TRIOS3_BODY_TIMEOUT": "5", "TRIOS3_REQUIRE_ENCRYPTED": "yes"},
    )
    backend = config.backend()
    assert backend == BackendSettings(
        url="http://s3.local:9000",
        region="us-east-1",
        access_key="backend",
        secret_key="backendsecret",
        max_connections=2 * 10 + 8,  # two per request in flight, and a few more
        timeout=7.0,
        ca_bundle=None,  # the system's CAs
        checksum=True,  # uploads verified by the backend (crc32c)
    )
    assert "backendsecret" not in repr(backend) and "backendsecret" not in repr(config)
    proxy = config.proxy()
    assert proxy.backend == backend
    assert secrets_of(proxy.credentials) == {"client": "secret"}
    assert proxy.keyring is config.keyring
    assert (proxy.memory_budget, proxy.admission_timeout) == (64 * 1024**2, 30.0)
    assert (proxy.body_timeout, proxy.max_requests, proxy.require_encrypted) == (5.0, 10, True)
    assert proxy.virtual_host_domain is None


def test_the_embedded_backend_completes_the_config(tmp_path):
    config = config_from(["--data-dir", str(tmp_path)], {})  # no --backend: the embedded one
    with pytest.raises(ValueError):
        config.backend()
    started = config.with_backend("http://127.0.0.1:1", "us-east-1", "weed", "weedsecret")
    assert started.backend().url == "http://127.0.0.1:1"
    assert started.backend().access_key == "weed"
    assert started.proxy().credentials == config.credentials


def test_views_for_tests_take_the_configs_defaults():
    backend = BackendSettings.with_defaults("http://x:1", "eu", "a", "s")
    assert (
        backend
        == Config(
            backend_url="http://x:1",
            backend_region="eu",
            backend_access_key="a",
            backend_secret_key="s",
        ).backend()
    )
    assert (
        BackendSettings.with_defaults("http://x:1", "eu", "a", "s", backend_timeout=5).timeout == 5
    )
    keyring = Keyring([MasterKey(MasterKey.generate())])
    proxy = ProxySettings.with_defaults(
        credentials={"a": "s"}, keyring=keyring, backend=backend, memory_budget=1024
    )
    assert (proxy.memory_budget, proxy.backend, proxy.keyring) == (1024, backend, keyring)
    assert proxy.body_timeout == Config().body_timeout


def test_offline_tools_read_the_same_fields():
    parser = argparse.ArgumentParser()
    env = {**BASE_ENV, "TRIOS3_BACKEND_REGION": "eu"}
    add_tool_options(parser, env)
    args = parser.parse_args(["--backend", "http://s3.local:9000", "--backend-timeout", "7"])
    settings, keyring = tool_settings(args, env)
    assert (settings.url, settings.region, settings.timeout) == ("http://s3.local:9000", "eu", 7.0)
    assert (settings.access_key, settings.secret_key) == ("backend", "backendsecret")
    assert keyring.primary.key_id == MasterKey.from_base64(KEY).key_id


# -- --workers and --backend-ca-bundle ---------------------------------------------------------


def test_workers_are_one_by_default_and_a_flag_or_a_variable():
    assert Config().workers == 1
    assert config_from(["--backend", "http://x:1"], BASE_ENV).workers == 1
    assert config_from(["--backend", "http://x:1", "--workers", "3"], BASE_ENV).workers == 3
    env = {**BASE_ENV, "TRIOS3_WORKERS": "2"}
    assert config_from(["--backend", "http://x:1"], env).workers == 2
    serve = argparse.ArgumentParser()
    add_serve_options(serve, {})
    text = " ".join(serve.format_help().split())
    assert "[TRIOS3_WORKERS; default 1]" in text


def test_each_worker_gets_its_share_and_the_shares_add_up_to_the_totals():
    mib = 1024**2
    config = Config(workers=3, memory_budget=64 * mib + 1, max_requests=256, max_connections=10)
    shares = [config.worker_share(slot) for slot in range(3)]
    assert [s.memory_budget for s in shares] == [64 * mib // 3 + 1] * 2 + [64 * mib // 3]
    assert [s.max_requests for s in shares] == [86, 85, 85]
    assert [s.max_connections for s in shares] == [4, 3, 3]
    assert sum(s.memory_budget for s in shares) == config.memory_budget
    # Everything else is the supervisor's, and each worker's backend pool follows its share.
    assert all(s.listen == config.listen and s.workers == 3 for s in shares)
    assert shares[0].backend_timeout == config.backend_timeout
    assert Config(workers=1).worker_share(0) == Config(workers=1)
    with pytest.raises(ValueError):
        config.worker_share(3)


def test_the_backend_ca_bundle_reaches_the_backend_view_and_the_offline_tools(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")  # only its existence is checked here
    from_flag = config_from(
        ["--backend", "https://s3.local:9000", "--backend-ca-bundle", str(bundle)], BASE_ENV
    )
    env = {**BASE_ENV, "TRIOS3_BACKEND_CA_BUNDLE": str(bundle)}
    from_env = config_from(["--backend", "https://s3.local:9000"], env)
    for config in (from_flag, from_env):
        assert config.backend_ca_bundle == str(bundle)
        assert config.backend().ca_bundle == str(bundle)
        assert config.proxy().backend.ca_bundle == str(bundle)
    assert config_from(["--backend", "http://x:1"], BASE_ENV).backend().ca_bundle is None
    assert BackendSettings.with_defaults("http://x:1", "eu", "a", "s").ca_bundle is None

    parser = argparse.ArgumentParser()
    add_tool_options(parser, env)
    settings, _ = tool_settings(parser.parse_args(["--backend", "https://s3.local:9000"]), env)
    assert settings.ca_bundle == str(bundle)
    parser = argparse.ArgumentParser()
    add_tool_options(parser, BASE_ENV)
    missing = parser.parse_args(["--backend", "https://x:1", "--backend-ca-bundle", "/no.pem"])
    with pytest.raises(ConfigError) as caught:
        tool_settings(missing, BASE_ENV)
    assert str(caught.value) == "--backend-ca-bundle: no such file: /no.pem"


@pytest.mark.parametrize("flag", [[], ["--require-encrypted"]])
def test_the_banner_says_whether_objects_not_encrypted_are_refused(flag):
    from trios3.cli import _banner

    config = config_from(["--backend", "http://s3.local:9000", *flag], BASE_ENV)
    text = _banner(config, ["http://127.0.0.1:8080"])
    if flag:
        assert "objects not encrypted by trios3: refused (--require-encrypted)" in text
    else:
        assert "served as they are (migration mode; --require-encrypted refuses them)" in text


def test_the_banner_says_when_the_backend_does_not_verify_uploads():
    from trios3.cli import _banner

    quiet = config_from(["--backend", "http://s3.local:9000"], BASE_ENV)
    assert "--backend-checksum" not in _banner(quiet, [])
    off = config_from(["--backend", "http://s3.local:9000", "--backend-checksum", "off"], BASE_ENV)
    assert "uploads: not verified by the backend (--backend-checksum off)" in _banner(off, [])
    with pytest.raises(ConfigError, match="--backend-checksum: expected crc32c or off"):
        config_from(["--backend", "http://s3.local:9000", "--backend-checksum", "md5"], BASE_ENV)


# -- keys an HSM or KMS keeps: pkcs11: and kmip: lines of the key file --------------------------

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def managed_line(manager: str = "pkcs11", name: str = "kek", key_id: str = "0123456789abcdef"):
    from trios3.keystores import ManagedKey

    return ManagedKey(manager, name, key_id, bytes(range(60)))


@pytest.mark.parametrize("name", ["kek", "a label: with spaces, # and commas", "é/%", "42"])
def test_a_key_managers_line_names_its_key_and_round_trips(name):
    from trios3.keystores import ManagedKey

    for manager in ("pkcs11", "kmip"):
        line = managed_line(manager, name).line()
        assert line.startswith(f"{manager}:") and len(line.split()) == 1 and "," not in line
        assert "#" not in line
        assert ManagedKey.parse(line) == managed_line(manager, name)
        assert ManagedKey.parse(f"  {line}\n").key_name == name


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("hsm:kek:0123456789abcdef:AAAA", "unknown key manager 'hsm' (pkcs11: or kmip:)"),
        ("pkcs11:kek:AAAA", "a pkcs11: line is pkcs11:NAME:KEY_ID:BASE64"),
        ("kmip:1:2:0123456789abcdef:AAAA", "a kmip: line is kmip:NAME:KEY_ID:BASE64"),
        ("pkcs11::0123456789abcdef:AAAA", "a pkcs11: line names no key"),
        ("pkcs11:kek:0123456789ABCDEF:AAAA", "a pkcs11: line's key id is not 16 hex digits"),
        ("kmip:7:0123:AAAA", "a kmip: line's key id is not 16 hex digits"),
        (
            "pkcs11:kek:0123456789abcdef:not*base64",
            "a pkcs11: line's wrapped key is not valid base64",
        ),
        (
            "pkcs11:kek:0123456789abcdef:" + base64.b64encode(bytes(59)).decode(),
            "a pkcs11: line's wrapped key is not 60 bytes",
        ),
    ],
)
def test_bad_key_manager_lines_are_one_clear_line(tmp_path, entry, expected):
    from trios3.config import load_keyring

    path = tmp_path / "keys"
    path.write_text(f"{KEY}\n{entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_keyring(str(path), {})
    assert str(caught.value) == f"--key-file {path}: key 2: {expected}"
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="TRIOS3_MASTER_KEY: key 1: "):
        load_keyring(None, {"TRIOS3_MASTER_KEY": entry})


def test_a_key_file_mixes_its_own_keys_and_those_a_key_manager_keeps(tmp_path):
    from trios3.config import read_keys
    from trios3.core.errors import S3Error
    from trios3.keystores import HeldKey

    kept = managed_line("pkcs11", "kek", "00000000000000aa")
    other = managed_line("kmip", "42", "00000000000000bb")
    path = tmp_path / "keys"
    path.write_text(f"# the primary, in the HSM\n{kept.line()}\n{KEY}  # older\n{other.line()}\n")
    keyring, held = read_keys(str(path), {})
    own = MasterKey.from_base64(KEY).key_id
    assert keyring.key_ids == ("00000000000000aa", own, "00000000000000bb")
    assert [key.managed for key in held] == [kept, other]
    assert all(isinstance(key, HeldKey) for key in held)
    assert keyring.primary is held[0]
    # Until the key manager has decrypted it, the key is unavailable (503), never a wrong key.
    assert held[0].problem() == "master key 00000000000000aa is not available: not loaded yet"
    with pytest.raises(S3Error) as caught:
        keyring.seal_new("bucket", "key")
    assert caught.value.status == 503 and caught.value.code == "ServiceUnavailable"
    # The variable takes the same lines.
    from_env, held_env = read_keys(None, {"TRIOS3_MASTER_KEY": f"{KEY},{kept.line()}"})
    assert from_env.key_ids == (own, "00000000000000aa")
    assert [key.managed for key in held_env] == [kept]
    assert read_keys(None, {"TRIOS3_MASTER_KEY": KEY})[1] == ()


def test_keygen_adds_and_promotes_a_key_manager_line(tmp_path):
    from trios3.config import add_key, load_keyring, promote_key

    path = tmp_path / "keys"
    first = write_key_file(path, managed_line(key_id="00000000000000aa"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == managed_line(key_id="00000000000000aa").line() + "\n"
    second = add_key(path, primary=False)
    third = add_key(path, primary=False, managed=managed_line("kmip", "7", "00000000000000cc"))
    assert load_keyring(str(path), {}).key_ids == (first, second, third)
    promote_key(path, third)
    assert load_keyring(str(path), {}).key_ids == (third, first, second)
    with pytest.raises(ConfigError, match="key 00000000000000aa is in it already"):
        add_key(path, primary=True, managed=managed_line(key_id="00000000000000aa"))


def kept_env(tmp_path, *lines) -> dict[str, str]:
    path = tmp_path / "kept.keys"
    path.write_text("".join(f"{line.line()}\n" for line in lines))
    return {**BASE_ENV, "TRIOS3_KEY_FILE": str(path)}


def test_a_key_managers_lines_need_how_to_reach_it(tmp_path):
    module = tmp_path / "libhsm.so"
    module.write_bytes(b"")
    cert = tmp_path / "client.pem"
    cert.write_text("")
    pkcs11 = kept_env(tmp_path, managed_line("pkcs11"))
    for env_change, message in (
        ({}, "pkcs11: keys need --pkcs11-module, the HSM's PKCS#11 library"),
        ({"TRIOS3_PKCS11_MODULE": str(module)}, "pkcs11: keys need --pkcs11-token-label"),
        (
            {"TRIOS3_PKCS11_MODULE": str(module), "TRIOS3_PKCS11_TOKEN_LABEL": "trios3"},
            "pkcs11: keys need TRIOS3_PKCS11_PIN, the token's user PIN",
        ),
        ({"TRIOS3_PKCS11_MODULE": "/no/such.so"}, "--pkcs11-module: no such file: /no/such.so"),
    ):
        with pytest.raises(ConfigError) as caught:
            config_from(["--backend", "http://x:1"], {**pkcs11, **env_change})
        assert message in str(caught.value) and "\n" not in str(caught.value)
    kmip = kept_env(tmp_path, managed_line("kmip", "42"))
    for env_change, message in (
        ({}, "kmip: keys need --kmip-host, the KMIP server's host name"),
        ({"TRIOS3_KMIP_HOST": "kms.local"}, "kmip: keys need --kmip-cert, the client certificate"),
        (
            {"TRIOS3_KMIP_HOST": "kms.local", "TRIOS3_KMIP_CERT": str(cert)},
            "kmip: keys need --kmip-key, its private key",
        ),
        ({"TRIOS3_KMIP_PORT": "99999"}, "--kmip-port: expected a port number, got '99999'"),
        (
            {
                "TRIOS3_KMIP_HOST": "kms.local",
                "TRIOS3_KMIP_CERT": str(cert),
                "TRIOS3_KMIP_KEY": str(cert),
                "TRIOS3_KMS_CACHE_SECONDS": "10",
                "TRIOS3_KMS_TIMEOUT": "6",
            },
            "--kms-timeout 6: at most half of --kms-cache-seconds (10)",
        ),
    ):
        with pytest.raises(ConfigError) as caught:
            config_from(["--backend", "http://x:1"], {**kmip, **env_change})
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_key_managers_settings_reach_its_view_and_the_pin_is_never_shown(tmp_path):
    module = tmp_path / "libhsm.so"
    module.write_bytes(b"")
    env = {
        **kept_env(
            tmp_path, managed_line("pkcs11"), managed_line("kmip", "42", "00000000000000bb")
        ),
        "TRIOS3_PKCS11_TOKEN_LABEL": "trios3",
        "TRIOS3_PKCS11_PIN": "s3cr3t-pin",
        "TRIOS3_KMIP_HOST": "kms.local",
        "TRIOS3_KMIP_CERT": str(module),
        "TRIOS3_KMIP_KEY": str(module),
    }
    config = config_from(
        ["--backend", "http://x:1", "--pkcs11-module", str(module), "--kms-cache-seconds", "60"],
        env,
    )
    assert [key.managed.manager for key in config.held_keys] == ["pkcs11", "kmip"]
    assert config.keyring.key_ids == ("0123456789abcdef", "00000000000000bb")
    view = config.keystore()
    assert (view.pkcs11_module, view.pkcs11_token_label, view.pkcs11_pin) == (
        str(module),
        "trios3",
        "s3cr3t-pin",
    )
    assert (view.kmip_host, view.kmip_port, view.kmip_ca) == ("kms.local", 5696, None)
    assert (view.cache_seconds, view.timeout) == (60.0, 10.0)
    assert "s3cr3t-pin" not in repr(config) and "s3cr3t-pin" not in repr(view)
    serve = argparse.ArgumentParser()
    add_serve_options(serve, {})
    text = serve.format_help()
    assert "--pkcs11-module" in text and "--kms-cache-seconds" in text
    assert "PIN" not in " ".join(a for action in serve._actions for a in action.option_strings)
    from trios3.cli import _banner

    banner = _banner(config, [])
    assert (
        "master keys: 2 of 2 kept by the KMIP server kms.local:5696 and the PKCS#11 token "
        "'trios3', decrypted there every 30 s and kept 60 s (--kms-cache-seconds)"
    ) in banner


def test_keygen_for_a_key_manager_is_one_clear_line_when_its_options_are_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOS3_")}
    for args, expected in (
        (["--pkcs11"], "pkcs11: keys need --pkcs11-module"),
        (["--kmip"], "kmip: keys need --kmip-host"),
        (["--create-key"], "--create-key goes with --pkcs11 or --kmip"),
        (["--pkcs11", "--promote", "0" * 16], "--promote takes no --pkcs11 or --kmip"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "trios3.cli", "keygen", *args, str(tmp_path / "keys")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
        assert expected in result.stderr
        assert not (tmp_path / "keys").exists()
