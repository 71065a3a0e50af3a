"""Master keys, envelopes and the keyring: binding, rotation and every metadata tampering."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac

import pytest

from trios3.core.errors import TamperedError
from trios3.core.format import DEFAULT_SEGMENT_SIZE, FORMAT_VERSION
from trios3.core.keys import (
    META_CONTENT_MD5,
    META_DATA_KEY,
    META_KEY_ID,
    META_SEGMENT_SIZE,
    META_VERSION,
    WRAPPED_KEY_SIZE,
    Envelope,
    Keyring,
    MasterKey,
    open_content_md5,
    seal_content_md5,
    wrap_context,
)

RAW_A = bytes(range(32))
RAW_B = bytes(range(100, 132))


@pytest.fixture
def key_a() -> MasterKey:
    return MasterKey.from_bytes(RAW_A)


@pytest.fixture
def key_b() -> MasterKey:
    return MasterKey.from_bytes(RAW_B)


def test_key_id_is_hmac_of_label(key_a: MasterKey) -> None:
    expected = hmac.new(RAW_A, b"trios3 key id v1", hashlib.sha256).digest()[:8].hex()
    assert key_a.key_id == expected
    assert len(key_a.key_id) == 16


def test_master_key_length_is_checked() -> None:
    with pytest.raises(ValueError, match="master key must be 32 bytes, got 31"):
        MasterKey.from_bytes(bytes(31))
    with pytest.raises(ValueError, match="got 33"):
        MasterKey.from_base64(base64.b64encode(bytes(33)).decode())


def test_master_key_from_base64_strips_whitespace_and_rejects_garbage() -> None:
    text = base64.b64encode(RAW_A).decode()
    assert MasterKey.from_base64(f"  {text}\n").key_id == MasterKey.from_bytes(RAW_A).key_id
    for bad in ("not base64!", text[:-1], text + "A", ""):
        with pytest.raises(ValueError) as info:
            MasterKey.from_base64(bad)
        assert "\n" not in str(info.value)
        assert text not in str(info.value)


def test_generate_gives_fresh_32_bytes() -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    assert len(a) == 32 and a != b


def test_repr_never_shows_key_material(key_a: MasterKey) -> None:
    text = repr(key_a) + str(key_a) + repr(Keyring([key_a]))
    assert key_a.key_id in repr(key_a)
    for secret in (RAW_A.hex(), base64.b64encode(RAW_A).decode(), repr(RAW_A), str(RAW_A)):
        assert secret not in text
    assert not hasattr(key_a, "__dict__")  # nothing besides the KEK and the id is kept


def test_seal_and_open_round_trip(key_a: MasterKey) -> None:
    ring = Keyring([key_a])
    dek, env = ring.seal_new("bucket", "a/key")
    assert len(dek) == 32
    assert env.version == FORMAT_VERSION
    assert env.key_id == key_a.key_id
    assert env.segment_size == DEFAULT_SEGMENT_SIZE
    assert len(env.wrapped_key) == WRAPPED_KEY_SIZE == 60
    assert ring.open(env, "bucket", "a/key") == dek


def test_every_seal_gets_a_fresh_data_key(key_a: MasterKey) -> None:
    ring = Keyring([key_a])
    seen = {ring.seal_new("b", "k")[0] for _ in range(50)}
    assert len(seen) == 50
    env1, env2 = ring.seal_new("b", "k")[1], ring.seal_new("b", "k")[1]
    assert env1.wrapped_key[:12] != env2.wrapped_key[:12]


def test_metadata_round_trip(key_a: MasterKey) -> None:
    _, env = Keyring([key_a]).seal_new("b", "k", 4096)
    meta = env.to_metadata()
    assert set(meta) == {META_VERSION, META_KEY_ID, META_SEGMENT_SIZE, META_DATA_KEY}
    assert meta[META_VERSION] == "1"
    assert meta[META_SEGMENT_SIZE] == "4096"
    headers = {"content-type": "text/plain", "x-amz-meta-mtime": "1", **meta}
    assert Envelope.from_metadata(headers) == env


def test_no_trios3_metadata_means_not_encrypted() -> None:
    assert Envelope.from_metadata({}) is None
    assert Envelope.from_metadata({"x-amz-meta-trios3": "x", "etag": '"abc"'}) is None


@pytest.mark.parametrize("missing", [META_VERSION, META_KEY_ID, META_SEGMENT_SIZE, META_DATA_KEY])
def test_incomplete_metadata_is_tampered(key_a: MasterKey, missing: str) -> None:
    meta = Keyring([key_a]).seal_new("b", "k")[1].to_metadata()
    del meta[missing]
    with pytest.raises(TamperedError):
        Envelope.from_metadata(meta)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (META_VERSION, "5"),
        (META_VERSION, "0"),
        (META_VERSION, "01"),
        (META_VERSION, "v1"),
        (META_VERSION, "\uff11"),  # a non-ASCII digit
        (META_KEY_ID, "zz" * 8),
        (META_KEY_ID, "ABCDEF0123456789"),
        (META_KEY_ID, "abc"),
        (META_SEGMENT_SIZE, "65537"),
        (META_SEGMENT_SIZE, "2048"),
        (META_SEGMENT_SIZE, str(2**25)),
        (META_SEGMENT_SIZE, "065536"),
        (META_SEGMENT_SIZE, "-4096"),
        (META_SEGMENT_SIZE, ""),
        (META_DATA_KEY, "***"),
        (META_DATA_KEY, base64.b64encode(bytes(59)).decode()),
        (META_DATA_KEY, base64.b64encode(bytes(61)).decode()),
    ],
)
def test_malformed_metadata_is_tampered(key_a: MasterKey, name: str, value: str) -> None:
    meta = Keyring([key_a]).seal_new("b", "k")[1].to_metadata()
    meta[name] = value
    with pytest.raises(TamperedError):
        Envelope.from_metadata(meta)


@pytest.mark.parametrize(
    ("bucket", "key"),
    [("other", "k"), ("b", "k2"), ("b", "K"), ("bk", ""), ("", "bk"), ("b", "k ")],
)
def test_data_key_moved_to_another_object_fails(key_a: MasterKey, bucket: str, key: str) -> None:
    ring = Keyring([key_a])
    _, env = ring.seal_new("b", "k")
    with pytest.raises(TamperedError):
        ring.open(env, bucket, key)


def test_length_prefixes_keep_bucket_and_key_apart() -> None:
    assert wrap_context(1, "id", 4096, "ab", "c") != wrap_context(1, "id", 4096, "a", "bc")


def test_altered_segment_size_fails(key_a: MasterKey) -> None:
    ring = Keyring([key_a])
    _, env = ring.seal_new("b", "k", 4096)
    with pytest.raises(TamperedError):
        ring.open(dataclasses.replace(env, segment_size=8192), "b", "k")
    meta = env.to_metadata()
    meta[META_SEGMENT_SIZE] = str(DEFAULT_SEGMENT_SIZE * 2)
    parsed = Envelope.from_metadata(meta)
    assert parsed is not None
    with pytest.raises(TamperedError):
        ring.open(parsed, "b", "k")


def test_altered_key_id_fails(key_a: MasterKey, key_b: MasterKey) -> None:
    ring = Keyring([key_a, key_b])
    _, env = ring.seal_new("b", "k")
    with pytest.raises(TamperedError):
        ring.open(dataclasses.replace(env, key_id=key_b.key_id), "b", "k")


def test_altered_version_fails(key_a: MasterKey) -> None:
    ring = Keyring([key_a])
    _, env = ring.seal_new("b", "k")
    with pytest.raises(TamperedError):
        ring.open(dataclasses.replace(env, version=2), "b", "k")


def test_flipped_wrapped_key_fails(key_a: MasterKey) -> None:
    ring = Keyring([key_a])
    _, env = ring.seal_new("b", "k")
    for i in range(len(env.wrapped_key)):
        damaged = bytearray(env.wrapped_key)
        damaged[i] ^= 0x10
        with pytest.raises(TamperedError):
            ring.open(dataclasses.replace(env, wrapped_key=bytes(damaged)), "b", "k")


def test_unknown_key_id_fails(key_a: MasterKey, key_b: MasterKey) -> None:
    _, env = Keyring([key_a]).seal_new("b", "k")
    with pytest.raises(TamperedError, match="unknown master key"):
        Keyring([key_b]).open(env, "b", "k")


def test_wrong_master_key_fails(key_a: MasterKey, key_b: MasterKey) -> None:
    _, env = Keyring([key_a]).seal_new("b", "k")
    context = wrap_context(env.version, env.key_id, env.segment_size, "b", "k")
    with pytest.raises(TamperedError):
        key_b.unwrap(env.wrapped_key, context)


def test_rotation_old_keys_keep_decrypting(key_a: MasterKey, key_b: MasterKey) -> None:
    old_ring = Keyring([key_a])
    dek, env = old_ring.seal_new("b", "k")
    ring = Keyring([key_a, key_b], primary_id=key_b.key_id)
    assert ring.primary is key_b
    assert ring.open(env, "b", "k") == dek
    _, new_env = ring.seal_new("b", "k2")
    assert new_env.key_id == key_b.key_id


def test_rewrap_binds_the_same_data_key_to_the_destination(
    key_a: MasterKey, key_b: MasterKey
) -> None:
    dek, env = Keyring([key_a]).seal_new("src", "a", 4096)
    ring = Keyring([key_a, key_b], primary_id=key_b.key_id)
    moved = ring.rewrap(env, "src", "a", "dst", "b")
    assert moved.key_id == key_b.key_id
    assert moved.segment_size == 4096
    assert ring.open(moved, "dst", "b") == dek
    with pytest.raises(TamperedError):
        ring.open(moved, "src", "a")
    with pytest.raises(TamperedError):
        ring.rewrap(env, "src", "wrong", "dst", "b")


def test_keyring_configuration_errors(key_a: MasterKey) -> None:
    with pytest.raises(ValueError):
        Keyring([])
    with pytest.raises(ValueError):
        Keyring([key_a, MasterKey.from_bytes(RAW_A)])
    with pytest.raises(ValueError):
        Keyring([key_a], primary_id="0" * 16)
    with pytest.raises(ValueError):
        Keyring([key_a]).seal_new("b", "k", 1000)
    assert Keyring([key_a]).primary is key_a


# -- versions 3 and 4: the sealed content MD5 ---------------------------------------------------

MD5 = hashlib.md5(b"the plaintext").digest()


@pytest.mark.parametrize(("layout", "sealed_version"), [(1, 3), (2, 4)])
def test_a_content_md5_gives_the_sealed_version_and_round_trips(
    key_a: MasterKey, layout: int, sealed_version: int
) -> None:
    ring = Keyring([key_a])
    dek, env = ring.seal_new("b", "k", version=layout, content_md5=MD5)
    assert env.version == sealed_version
    assert env.layout == layout and env.multipart == (layout == 2)
    assert env.sealed_md5 is not None and len(env.sealed_md5) == 44
    meta = env.to_metadata()
    assert set(meta) == {
        META_VERSION,
        META_KEY_ID,
        META_SEGMENT_SIZE,
        META_DATA_KEY,
        META_CONTENT_MD5,
    }
    assert meta[META_VERSION] == str(sealed_version)
    parsed = Envelope.from_metadata(meta)
    assert parsed == env
    assert ring.open(parsed, "b", "k") == dek
    assert open_content_md5(dek, parsed.sealed_md5, "b", "k") == MD5


def test_the_md5_is_not_stored_in_the_clear(key_a: MasterKey) -> None:
    _, env = Keyring([key_a]).seal_new("b", "k", content_md5=MD5)
    stored = " ".join(env.to_metadata().values()).encode()
    for form in (
        MD5,
        MD5.hex().encode(),
        base64.b64encode(MD5),
        base64.b64encode(MD5).rstrip(b"="),
    ):
        assert form not in stored and form not in env.sealed_md5


def test_without_a_content_md5_the_layouts_keep_versions_1_and_2(key_a: MasterKey) -> None:
    ring = Keyring([key_a])
    for layout in (1, 2):
        _, env = ring.seal_new("b", "k", version=layout)
        assert (env.version, env.sealed_md5) == (layout, None)
    for not_a_layout in (3, 4, 5):
        with pytest.raises(ValueError):
            ring.seal_new("b", "k", version=not_a_layout)


def test_every_seal_has_its_own_nonce(key_a: MasterKey) -> None:
    """An object and its copies share a data key; a copy with new metadata seals again."""
    dek, _ = Keyring([key_a]).seal_new("b", "k")
    sealed = {seal_content_md5(dek, MD5, "b", "k") for _ in range(20)}
    assert len(sealed) == 20
    assert len({s[:12] for s in sealed}) == 20
    assert all(open_content_md5(dek, s, "b", "k") == MD5 for s in sealed)


def test_sealed_md5_is_bound_to_the_objects_name(key_a: MasterKey) -> None:
    """A copy shares the data key: the name in the AAD keeps each copy's MD5 its own."""
    dek, env = Keyring([key_a]).seal_new("b", "k", content_md5=MD5)
    for bucket, key in (("b", "k2"), ("b2", "k"), ("bk", ""), ("", "bk")):
        with pytest.raises(TamperedError):
            open_content_md5(dek, env.sealed_md5, bucket, key)


def test_sealed_md5_of_another_object_fails(key_a: MasterKey) -> None:
    ring = Keyring([key_a])
    dek, _ = ring.seal_new("b", "k", content_md5=MD5)
    _, other = ring.seal_new("b", "k", content_md5=MD5)  # same name, same MD5, another data key
    with pytest.raises(TamperedError):
        open_content_md5(dek, other.sealed_md5, "b", "k")


def test_flipped_sealed_md5_fails(key_a: MasterKey) -> None:
    dek, env = Keyring([key_a]).seal_new("b", "k", content_md5=MD5)
    for i in range(len(env.sealed_md5)):
        damaged = bytearray(env.sealed_md5)
        damaged[i] ^= 0x01
        with pytest.raises(TamperedError):
            open_content_md5(dek, bytes(damaged), "b", "k")
    for cut in (env.sealed_md5[:-1], env.sealed_md5 + b"x", b""):
        with pytest.raises(TamperedError):
            open_content_md5(dek, cut, "b", "k")


def test_the_md5_is_not_sealed_under_the_data_key_itself(key_a: MasterKey) -> None:
    """A key derived for the MD5 alone: the DEK's own nonces belong to the body's segments."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    dek, env = Keyring([key_a]).seal_new("b", "k", content_md5=MD5)
    aad = b"trios3 v3 content-md5\x00" + b"\x00\x00\x00\x01b" + b"\x00\x00\x00\x01k"
    assert open_content_md5(dek, env.sealed_md5, "b", "k") == MD5
    with pytest.raises(InvalidTag):
        AESGCM(dek).decrypt(env.sealed_md5[:12], env.sealed_md5[12:], aad)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "not base64!",
        base64.b64encode(bytes(43)).decode(),
        base64.b64encode(bytes(45)).decode(),
    ],
)
@pytest.mark.parametrize("layout", [1, 2])
def test_sealed_versions_need_a_well_formed_sealed_md5(
    key_a: MasterKey, value: str | None, layout: int
) -> None:
    meta = Keyring([key_a]).seal_new("b", "k", version=layout, content_md5=MD5)[1].to_metadata()
    if value is None:
        del meta[META_CONTENT_MD5]
    else:
        meta[META_CONTENT_MD5] = value
    with pytest.raises(TamperedError):
        Envelope.from_metadata(meta)


@pytest.mark.parametrize("layout", [1, 2])
def test_a_sealed_version_posing_as_its_layout_fails(key_a: MasterKey, layout: int) -> None:
    """Dropping the MD5 by relabelling the object as version 1 or 2 breaks the wrap."""
    ring = Keyring([key_a])
    _, env = ring.seal_new("b", "k", version=layout, content_md5=MD5)
    meta = env.to_metadata()
    meta[META_VERSION] = str(layout)
    relabelled = Envelope.from_metadata(meta)
    assert relabelled.sealed_md5 is None  # a reader of version 1 or 2 ignores the field...
    with pytest.raises(TamperedError):
        ring.open(relabelled, "b", "k")  # ...and the data key no longer unwraps


def test_version_1_posing_as_version_3_fails(key_a: MasterKey) -> None:
    ring = Keyring([key_a])
    dek, env = ring.seal_new("b", "k")
    forged = dataclasses.replace(env, version=3, sealed_md5=seal_content_md5(dek, MD5, "b", "k"))
    with pytest.raises(TamperedError):
        ring.open(Envelope.from_metadata(forged.to_metadata()), "b", "k")


def test_rewrap_carries_the_sealed_md5_or_seals_a_new_one(
    key_a: MasterKey, key_b: MasterKey
) -> None:
    dek, env = Keyring([key_a]).seal_new("src", "a", content_md5=MD5)
    ring = Keyring([key_a, key_b], primary_id=key_b.key_id)
    moved = ring.rewrap(env, "src", "a", "dst", "b")
    assert moved.version == 3
    assert moved.sealed_md5 != env.sealed_md5  # sealed again, for the destination's name
    assert open_content_md5(ring.open(moved, "dst", "b"), moved.sealed_md5, "dst", "b") == MD5
    other = hashlib.md5(b"other").digest()
    resealed = ring.rewrap(env, "src", "a", "dst", "b", content_md5=other)
    assert resealed.sealed_md5 != env.sealed_md5
    assert open_content_md5(dek, resealed.sealed_md5, "dst", "b") == other
    # A version 1 or 2 object gets its sealed version when a copy brings an MD5.
    for layout, sealed_version in ((1, 3), (2, 4)):
        _, plain = Keyring([key_a]).seal_new("src", "a", version=layout)
        assert ring.rewrap(plain, "src", "a", "d", "k", content_md5=MD5).version == sealed_version


def test_an_upload_token_is_bound_to_the_layout_version(key_a: MasterKey) -> None:
    """UploadPart opens the UploadId's key as version 2, with or without a sealed MD5."""
    ring = Keyring([key_a])
    dek, env = ring.seal_new("b", "k", version=2, content_md5=MD5)
    bound = ring.bind_to_upload(dek, env, "b", "k", "upload-1")
    assert (bound.version, bound.sealed_md5) == (2, None)
    token = Envelope(2, bound.key_id, bound.segment_size, bound.wrapped_key)
    assert ring.open(token, "b", "k", "upload-1") == dek
