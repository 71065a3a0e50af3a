"""The credentials file: today's files keep their admin meaning, every new field, every error."""

from __future__ import annotations

import textwrap

import pytest

from trios3.config import ConfigError
from trios3.core.access import ADMIN, Credential, Scope
from trios3.credentials import BucketKey, key_for, load_bucket_keys, load_credentials

KEY_A = "0123456789abcdef"
KEY_B = "fedcba9876543210"
PAIR = 'access_key_id = "a"\nsecret_access_key = "sa"\n'


@pytest.fixture
def write(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "credentials.toml"
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def scope_of(write, fields: str) -> Scope:
    return load_credentials(write(f"[[credentials]]\n{PAIR}{fields}"), {})["a"].scope


def error(write, text: str, environ=None) -> str:
    path = write(text)
    with pytest.raises(ConfigError) as info:
        load_credentials(path, environ or {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--credentials: ") or message.startswith("set both")
    return message.replace(path, "PATH")


# Today's files


def test_todays_file_still_loads_every_pair_as_an_admin(write):
    path = write(
        """
        [[credentials]]
        access_key_id = "a"
        secret_access_key = "sa"
        [[credentials]]
        access_key_id = "b"
        secret_access_key = "sb"
        """
    )
    assert load_credentials(path, {}) == {
        "a": Credential("a", "sa", ADMIN),
        "b": Credential("b", "sb", ADMIN),
    }
    assert load_bucket_keys(path) == ()


def test_the_environment_pair_is_an_admin(write):
    env = {"TRIOS3_ACCESS_KEY_ID": "env", "TRIOS3_SECRET_ACCESS_KEY": "se"}
    assert load_credentials(None, env) == {"env": Credential("env", "se", ADMIN)}
    both = load_credentials(write(f"[[credentials]]\n{PAIR}buckets = ['x']\n"), env)
    assert list(both) == ["a", "env"]
    assert both["env"].scope == ADMIN


def test_no_file_and_no_environment_is_no_credentials():
    assert load_credentials(None, {}) == {}
    assert load_credentials("", {}) == {}
    assert load_bucket_keys(None) == ()


def test_an_empty_file_has_no_credentials(write):
    assert load_credentials(write(""), {}) == {}


# New fields


def test_buckets_make_a_read_write_tenant_that_is_not_an_admin(write):
    assert scope_of(write, 'buckets = ["team-a-*", "shared"]') == Scope(
        buckets=("team-a-*", "shared"), access="read-write", admin=False
    )


def test_prefixes_and_read_only_each_turn_the_admin_default_off(write):
    assert scope_of(write, 'prefixes = ["restic/", "velero/"]') == Scope(
        prefixes=("restic/", "velero/"), admin=False
    )
    assert scope_of(write, 'access = "read-only"') == Scope(access="read-only", admin=False)


def test_access_read_write_alone_keeps_the_admin_default(write):
    assert scope_of(write, 'access = "read-write"') == ADMIN


def test_admin_may_be_given_either_way(write):
    assert scope_of(write, "admin = false") == Scope(admin=False)
    assert scope_of(write, 'buckets = ["x-*"]\nadmin = true') == Scope(buckets=("x-*",), admin=True)
    assert scope_of(write, "admin = true") == ADMIN


def test_every_field_at_once(write):
    scope = scope_of(
        write,
        f'buckets = ["team-a-?"]\nprefixes = ["in/"]\naccess = "read-only"\n'
        f'admin = false\nkey_id = "{KEY_A}"',
    )
    assert scope == Scope(
        buckets=("team-a-?",), prefixes=("in/",), access="read-only", admin=False, key_id=KEY_A
    )


def test_an_admin_may_name_its_key(write):
    assert scope_of(write, f'key_id = "{KEY_A}"') == Scope(admin=True, key_id=KEY_A)


def test_bucket_keys_are_loaded_in_order(write):
    path = write(
        f"""
        [[credentials]]
        {PAIR}
        [[bucket_keys]]
        buckets = ["team-a-*"]
        key_id = "{KEY_A}"
        [[bucket_keys]]
        buckets = ["team-*", "other"]
        key_id = "{KEY_B}"
        """
    )
    assert load_bucket_keys(path) == (
        BucketKey(("team-a-*",), KEY_A),
        BucketKey(("team-*", "other"), KEY_B),
    )


def test_a_file_may_hold_only_bucket_keys(write):
    path = write(f'[[bucket_keys]]\nbuckets = ["b"]\nkey_id = "{KEY_A}"\n')
    assert load_credentials(path, {}) == {}
    assert load_bucket_keys(path) == (BucketKey(("b",), KEY_A),)


# key_for


BUCKET_KEYS = (BucketKey(("team-a-*",), KEY_A), BucketKey(("team-*", "shared"), KEY_B))


def test_key_for_prefers_the_credential_s_own_key():
    credential = Credential("a", "s", Scope(key_id="1111111111111111"))
    assert key_for(credential, "team-a-1", BUCKET_KEYS) == "1111111111111111"


def test_key_for_takes_the_first_bucket_pattern_that_matches():
    credential = Credential("a", "s", ADMIN)
    assert key_for(credential, "team-a-1", BUCKET_KEYS) == KEY_A
    assert key_for(credential, "team-b-1", BUCKET_KEYS) == KEY_B
    assert key_for(credential, "shared", BUCKET_KEYS) == KEY_B


def test_key_for_falls_back_to_the_primary():
    credential = Credential("a", "s", ADMIN)
    assert key_for(credential, "elsewhere", BUCKET_KEYS) is None
    assert key_for(credential, "team-a-1", ()) is None
    assert key_for(credential, "Team-a-1", BUCKET_KEYS) is None  # patterns are case-sensitive


# Errors, each one line


def test_an_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^--credentials: cannot read .*missing.toml: "):
        load_credentials(str(tmp_path / "missing.toml"), {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[credentials]\n", "--credentials: PATH is not valid TOML: "),
        (
            '[[credentials]]\naccess_key_id = "a"\n',
            "--credentials: every [[credentials]] in PATH needs "
            "access_key_id and secret_access_key",
        ),
        (
            '[[credentials]]\nsecret_access_key = "s"\n',
            "--credentials: every [[credentials]] in PATH needs "
            "access_key_id and secret_access_key",
        ),
        (
            '[[credentials]]\naccess_key_id = 7\nsecret_access_key = "s"\n',
            "--credentials: PATH: access_key_id must be a non-empty string",
        ),
        (
            '[[credentials]]\naccess_key_id = ""\nsecret_access_key = "s"\n',
            "--credentials: PATH: access_key_id must be a non-empty string",
        ),
        (
            '[[credentials]]\naccess_key_id = "a"\nsecret_access_key = ""\n',
            "--credentials: PATH: [[credentials]] 'a': secret_access_key must be a non-empty "
            "string",
        ),
        (
            f"[[credentials]]\n{PAIR}[[credentials]]\n{PAIR}",
            "--credentials: PATH: access key id 'a' is listed twice",
        ),
        (
            f"[[credentials]]\n{PAIR}bukets = ['team-a-*']\n",
            "--credentials: PATH: [[credentials]] 'a': unknown field 'bukets' (expected access, "
            "access_key_id, admin, buckets, key_id, prefixes, secret_access_key)",
        ),
        (
            f"[credentials]\n{PAIR}",
            "--credentials: PATH: credentials must be [[credentials]] tables",
        ),
        (
            'credentials = ["a"]\n',
            "--credentials: PATH: credentials must be [[credentials]] tables",
        ),
        (
            f"[[credential]]\n{PAIR}",
            "--credentials: PATH: unknown table 'credential' "
            "(expected [[credentials]] and [[bucket_keys]])",
        ),
        (
            f"[[credentials]]\n{PAIR}buckets = 'team-a-*'\n",
            "--credentials: PATH: [[credentials]] 'a': buckets must be a non-empty list of names "
            'or patterns, like ["team-a-*"]',
        ),
        (
            f"[[credentials]]\n{PAIR}buckets = []\n",
            "--credentials: PATH: [[credentials]] 'a': buckets must be a non-empty list of names "
            'or patterns, like ["team-a-*"]',
        ),
        (
            f"[[credentials]]\n{PAIR}buckets = ['team-[ab]']\n",
            "--credentials: PATH: [[credentials]] 'a': not a bucket name or pattern: 'team-[ab]' "
            "(letters, digits, . _ - and the wildcards * and ?)",
        ),
        (
            f"[[credentials]]\n{PAIR}buckets = ['a/b']\n",
            "--credentials: PATH: [[credentials]] 'a': not a bucket name or pattern: 'a/b' "
            "(letters, digits, . _ - and the wildcards * and ?)",
        ),
        (
            f"[[credentials]]\n{PAIR}buckets = ['']\n",
            "--credentials: PATH: [[credentials]] 'a': not a bucket name or pattern: '' "
            "(letters, digits, . _ - and the wildcards * and ?)",
        ),
        (
            f"[[credentials]]\n{PAIR}buckets = [1]\n",
            "--credentials: PATH: [[credentials]] 'a': not a bucket name or pattern: 1 "
            "(letters, digits, . _ - and the wildcards * and ?)",
        ),
        (
            f"[[credentials]]\n{PAIR}prefixes = 'restic/'\n",
            "--credentials: PATH: [[credentials]] 'a': prefixes must be a non-empty list of key "
            'prefixes, like ["restic/"]',
        ),
        (
            f"[[credentials]]\n{PAIR}prefixes = []\n",
            "--credentials: PATH: [[credentials]] 'a': prefixes must be a non-empty list of key "
            'prefixes, like ["restic/"]',
        ),
        (
            f"[[credentials]]\n{PAIR}prefixes = ['']\n",
            "--credentials: PATH: [[credentials]] 'a': not a key prefix: '' "
            "(every key: leave prefixes out)",
        ),
        (
            f"[[credentials]]\n{PAIR}access = 'readonly'\n",
            "--credentials: PATH: [[credentials]] 'a': access must be \"read-only\" or "
            "\"read-write\", got 'readonly'",
        ),
        (
            f"[[credentials]]\n{PAIR}admin = 'yes'\n",
            "--credentials: PATH: [[credentials]] 'a': admin must be true or false, got 'yes'",
        ),
        (
            f"[[credentials]]\n{PAIR}admin = true\naccess = 'read-only'\n",
            "--credentials: PATH: [[credentials]] 'a': an admin cannot be access = \"read-only\"",
        ),
        (
            f"[[credentials]]\n{PAIR}admin = true\nprefixes = ['x/']\n",
            "--credentials: PATH: [[credentials]] 'a': an admin reaches every key of its "
            "buckets: drop prefixes",
        ),
        (
            f"[[credentials]]\n{PAIR}key_id = '0123456789ABCDEF'\n",
            "--credentials: PATH: [[credentials]] 'a': key_id must be 16 lower-case hex "
            "characters, as trios3 keygen prints, got '0123456789ABCDEF'",
        ),
        (
            f"[[credentials]]\n{PAIR}key_id = '0123456789abcde'\n",
            "--credentials: PATH: [[credentials]] 'a': key_id must be 16 lower-case hex "
            "characters, as trios3 keygen prints, got '0123456789abcde'",
        ),
        (
            f"[[credentials]]\n{PAIR}key_id = 12\n",
            "--credentials: PATH: [[credentials]] 'a': key_id must be 16 lower-case hex "
            "characters, as trios3 keygen prints, got 12",
        ),
        (
            "[[bucket_keys]]\nbuckets = ['b']\n",
            "--credentials: PATH: [[bucket_keys]] #1: needs buckets and key_id",
        ),
        (
            f"[[bucket_keys]]\nkey_id = '{KEY_A}'\n",
            "--credentials: PATH: [[bucket_keys]] #1: needs buckets and key_id",
        ),
        (
            f"[[bucket_keys]]\nbuckets = ['b']\nkey_id = '{KEY_A}'\n"
            f"[[bucket_keys]]\nbuckets = ['c']\nkey_id = '{KEY_A}'\nkey = 'x'\n",
            "--credentials: PATH: [[bucket_keys]] #2: unknown field 'key' "
            "(expected buckets, key_id)",
        ),
        (
            f"[[bucket_keys]]\nbuckets = 'b'\nkey_id = '{KEY_A}'\n",
            "--credentials: PATH: [[bucket_keys]] #1: buckets must be a non-empty list of names "
            'or patterns, like ["team-a-*"]',
        ),
        (
            "[[bucket_keys]]\nbuckets = ['b']\nkey_id = 'nope'\n",
            "--credentials: PATH: [[bucket_keys]] #1: key_id must be 16 lower-case hex "
            "characters, as trios3 keygen prints, got 'nope'",
        ),
        (
            "[bucket_keys]\nbuckets = ['b']\n",
            "--credentials: PATH: bucket_keys must be [[bucket_keys]] tables",
        ),
    ],
)
def test_every_mistake_is_one_line_that_says_what_to_fix(write, text, message):
    assert error(write, text).startswith(message)


def test_a_mistake_in_bucket_keys_stops_load_bucket_keys_too(write):
    path = write("[[bucket_keys]]\nbuckets = ['b']\nkey_id = 'nope'\n")
    with pytest.raises(ConfigError, match="key_id must be 16 lower-case hex"):
        load_bucket_keys(path)


def test_the_environment_pair_goes_together():
    for env in ({"TRIOS3_ACCESS_KEY_ID": "a"}, {"TRIOS3_SECRET_ACCESS_KEY": "s"}):
        with pytest.raises(ConfigError) as info:
            load_credentials(None, env)
        assert str(info.value) == (
            "set both TRIOS3_ACCESS_KEY_ID and TRIOS3_SECRET_ACCESS_KEY, or neither"
        )


def test_the_environment_pair_may_not_reuse_an_access_key_id_of_the_file(write):
    env = {"TRIOS3_ACCESS_KEY_ID": "a", "TRIOS3_SECRET_ACCESS_KEY": "other"}
    message = error(write, f"[[credentials]]\n{PAIR}buckets = ['x']\n", env)
    assert message == "--credentials: TRIOS3_ACCESS_KEY_ID 'a' is also in PATH"
