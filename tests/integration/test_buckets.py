"""Bucket operations and listings through the proxy.

Listings must speak of plaintext: sizes are the plaintext sizes and ETags are what HEAD says,
while everything else (keys, prefixes, markers, owners) is what the backend itself answers.
"""

from __future__ import annotations

import os
import re
import uuid
from urllib.parse import quote

import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from harness import code, scratch_bucket, status

pytestmark = pytest.mark.integration


def signed_get(endpoint, path: str, query: str) -> httpx.Response:
    url = f"{endpoint.url}{path}?{query}"
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3", "us-east-1").add_auth(
        request
    )
    verify = endpoint.ca_bundle if endpoint.url.startswith("https") else True
    return httpx.get(url, headers=dict(request.headers.items()), verify=verify)


@pytest.fixture(scope="module")
def bucket(seaweedfs):
    """One bucket for most of the module."""
    yield from scratch_bucket(seaweedfs, "buckets")


ODD_KEYS = ["d e", "plus+sign", "pct%20x", "x y+z%41", "ü/ñ", "tab\tkey", "amp&eq=q?"]
TREE = {
    "a/1": 0,
    "a/2": 1,
    "a/b/3": 70_000,
    "b/4": 131_073,
    "c": 65_536,
    **{key: 5 for key in ODD_KEYS},
}


@pytest.fixture(scope="module")
def tree(proxy, seaweedfs):
    """A bucket of objects of known sizes and odd names, written through the proxy."""
    client = proxy.client()
    for name in scratch_bucket(seaweedfs, "tree"):
        data = {key: os.urandom(size) for key, size in TREE.items()}
        for key, body in data.items():
            client.put_object(Bucket=name, Key=key, Body=body)
        yield name, data


# -- buckets ---------------------------------------------------------------------------------------


def test_bucket_life_cycle(proxy, seaweedfs):
    client = proxy.client()
    name = "life-" + uuid.uuid4().hex[:16]
    created = client.create_bucket(Bucket=name)
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert client.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert name in [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert name in [b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]]

    # (No BucketNotEmpty check: SeaweedFS itself deletes a bucket that still holds objects.)
    client.put_object(Bucket=name, Key="k", Body=b"x")
    client.delete_object(Bucket=name, Key="k")

    deleted = client.delete_bucket(Bucket=name)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as info:
        client.head_bucket(Bucket=name)
    assert status(info.value) == 404
    assert name not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_create_existing_bucket(proxy, seaweedfs, bucket):
    outcomes = []
    for client in (proxy.client(), seaweedfs.client()):
        with pytest.raises(ClientError) as info:
            client.create_bucket(Bucket=bucket)
        outcomes.append((status(info.value), code(info.value)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] in ((409, "BucketAlreadyOwnedByYou"), (409, "BucketAlreadyExists"))


def test_list_buckets_matches_backend(proxy, seaweedfs, bucket):
    mine = proxy.client().list_buckets()
    theirs = seaweedfs.client().list_buckets()
    assert bucket in [b["Name"] for b in mine["Buckets"]]
    assert mine["Buckets"] == theirs["Buckets"]
    assert mine.get("Owner") == theirs.get("Owner")


def test_get_bucket_location(proxy, seaweedfs, bucket):
    mine = proxy.client().get_bucket_location(Bucket=bucket)
    theirs = seaweedfs.client().get_bucket_location(Bucket=bucket)
    assert mine.get("LocationConstraint") == theirs.get("LocationConstraint")
    assert mine.get("LocationConstraint") in (None, "", "us-east-1")


def test_head_missing_bucket(proxy):
    with pytest.raises(ClientError) as info:
        proxy.client().head_bucket(Bucket="missing-" + uuid.uuid4().hex[:12])
    assert status(info.value) == 404


# -- listings --------------------------------------------------------------------------------------


def _strip_meta(resp: dict) -> dict:
    return {k: v for k, v in resp.items() if k != "ResponseMetadata"}


def test_listing_v2_speaks_plaintext(proxy, seaweedfs, tree):
    name, data = tree
    client = proxy.client()
    mine = client.list_objects_v2(Bucket=name)
    theirs = seaweedfs.client().list_objects_v2(Bucket=name)
    assert [c["Key"] for c in mine["Contents"]] == sorted(data)
    assert mine["KeyCount"] == len(data)
    assert not mine["IsTruncated"]
    for mine_entry, their_entry in zip(mine["Contents"], theirs["Contents"], strict=True):
        key = mine_entry["Key"]
        assert mine_entry["Size"] == len(data[key]), key
        head = client.head_object(Bucket=name, Key=key)
        assert mine_entry["ETag"] == head["ETag"], key
        assert head["ContentLength"] == mine_entry["Size"]
        assert mine_entry["ETag"] == their_entry["ETag"].rstrip('"') + '-0"'
        assert mine_entry["LastModified"] == their_entry["LastModified"]
        assert mine_entry.get("StorageClass") == their_entry.get("StorageClass")
        assert not [k for k in mine_entry if k.startswith("Checksum")]


def test_listing_v1_speaks_plaintext(proxy, tree):
    name, data = tree
    client = proxy.client()
    mine = client.list_objects(Bucket=name)
    assert [(c["Key"], c["Size"]) for c in mine["Contents"]] == sorted(
        (key, len(body)) for key, body in data.items()
    )
    etags = {c["Key"]: c["ETag"] for c in mine["Contents"]}
    for key in ("a/1", "b/4", "c"):
        assert etags[key] == client.head_object(Bucket=name, Key=key)["ETag"]


def test_listing_over_tls(tls_proxy, proxy, tree):
    name, _ = tree
    over_tls = tls_proxy.client().list_objects_v2(Bucket=name)["Contents"]
    over_http = proxy.client().list_objects_v2(Bucket=name)["Contents"]
    assert over_tls == over_http


@pytest.mark.parametrize("version", [1, 2])
def test_prefix_and_delimiter(proxy, seaweedfs, tree, version):
    name, _ = tree
    cases = [
        ({"Prefix": "a/"}, ["a/1", "a/2", "a/b/3"], []),
        ({"Delimiter": "/"}, sorted(k for k in TREE if "/" not in k), ["a/", "b/", "ü/"]),
        ({"Prefix": "a/", "Delimiter": "/"}, ["a/1", "a/2"], ["a/b/"]),
        ({"Prefix": "zzz"}, [], []),
    ]
    for kwargs, keys, prefixes in cases:
        listed = {}
        for who, client in (("proxy", proxy.client()), ("backend", seaweedfs.client())):
            fn = client.list_objects if version == 1 else client.list_objects_v2
            resp = fn(Bucket=name, **kwargs)
            listed[who] = (
                [c["Key"] for c in resp.get("Contents", [])],
                [p["Prefix"] for p in resp.get("CommonPrefixes", [])],
            )
        assert listed["proxy"] == (keys, prefixes), kwargs
        assert listed["proxy"] == listed["backend"], kwargs


def test_pagination_v2(proxy, tree):
    name, data = tree
    client = proxy.client()
    seen, token, pages = [], None, 0
    while True:
        kwargs = {"ContinuationToken": token} if token else {}
        resp = client.list_objects_v2(Bucket=name, MaxKeys=2, **kwargs)
        pages += 1
        page = [c["Key"] for c in resp.get("Contents", [])]
        assert len(page) <= 2
        assert resp["KeyCount"] == len(page)
        for entry in resp.get("Contents", []):
            assert entry["Size"] == len(data[entry["Key"]])
        seen += page
        if not resp["IsTruncated"]:
            break
        token = resp["NextContinuationToken"]
        assert pages < 50
    assert seen == sorted(data)
    assert pages >= len(data) // 2

    after = client.list_objects_v2(Bucket=name, StartAfter="b/4")
    assert [c["Key"] for c in after["Contents"]] == [k for k in sorted(data) if k > "b/4"]


def test_pagination_v1(proxy, tree):
    name, data = tree
    client = proxy.client()
    seen, marker, pages = [], "", 0
    while True:
        resp = client.list_objects(Bucket=name, MaxKeys=3, Marker=marker)
        pages += 1
        page = [c["Key"] for c in resp.get("Contents", [])]
        assert len(page) <= 3
        seen += page
        if not resp["IsTruncated"]:
            break
        # The last key, not NextMarker: SeaweedFS does not url-encode NextMarker although
        # boto3 asked for encoding-type=url (and decodes it), so "a+b" would come back "a b".
        marker = page[-1]
        assert pages < 50
    assert seen == sorted(data)
    assert pages >= len(data) // 3


def test_next_marker_passed_through(proxy, seaweedfs, tree):
    name, _ = tree
    pages = []
    for client in (proxy.client(), seaweedfs.client()):
        resp = client.list_objects(Bucket=name, MaxKeys=2, Delimiter="/")
        pages.append((resp.get("NextMarker"), resp["IsTruncated"], resp.get("Contents")))
    assert pages[0][:2] == pages[1][:2]
    assert pages[0][1] is True


def test_paginator_with_delimiter(proxy, tree):
    name, _ = tree
    paginator = proxy.client().get_paginator("list_objects_v2")
    keys, prefixes = [], []
    for page in paginator.paginate(Bucket=name, Delimiter="/", PaginationConfig={"PageSize": 2}):
        keys += [c["Key"] for c in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert keys == sorted(k for k in TREE if "/" not in k)
    assert prefixes == ["a/", "b/", "ü/"]


def test_odd_keys_round_trip(proxy, tree):
    name, data = tree
    client = proxy.client()
    for key in ODD_KEYS:
        assert client.get_object(Bucket=name, Key=key)["Body"].read() == data[key], key
    # boto3 asks for encoding-type=url itself and decodes the keys it gets.
    listed = [c["Key"] for c in client.list_objects_v2(Bucket=name)["Contents"]]
    assert set(ODD_KEYS) <= set(listed)
    listed_v1 = [c["Key"] for c in client.list_objects(Bucket=name)["Contents"]]
    assert set(ODD_KEYS) <= set(listed_v1)


@pytest.mark.parametrize("query", ["list-type=2&encoding-type=url", "encoding-type=url"])
def test_encoding_type_url_is_passed_through(proxy, seaweedfs, tree, query):
    """The raw documents name the keys exactly as the backend encodes them."""
    name, _ = tree
    mine = signed_get(proxy, f"/{name}", query)
    theirs = signed_get(seaweedfs, f"/{name}", query)
    assert mine.status_code == theirs.status_code == 200
    keys = re.findall(r"<Key>(.*?)</Key>", mine.text)
    assert keys == re.findall(r"<Key>(.*?)</Key>", theirs.text)
    assert "<EncodingType>url</EncodingType>" in mine.text
    # Nothing that needs encoding is left raw.
    assert not [k for k in keys if " " in k or "ü" in k]
    assert quote("ü", safe="") in "".join(keys)


def test_fetch_owner(proxy, seaweedfs, tree):
    name, _ = tree
    mine = proxy.client().list_objects_v2(Bucket=name, FetchOwner=True)["Contents"]
    theirs = seaweedfs.client().list_objects_v2(Bucket=name, FetchOwner=True)["Contents"]
    assert [c.get("Owner") for c in mine] == [c.get("Owner") for c in theirs]
    assert all("Owner" in c for c in mine)
    plain = proxy.client().list_objects_v2(Bucket=name)["Contents"]
    backend_plain = seaweedfs.client().list_objects_v2(Bucket=name)["Contents"]
    assert [c.get("Owner") for c in plain] == [c.get("Owner") for c in backend_plain]


def test_list_object_versions_sizes(proxy, tree):
    name, data = tree
    resp = proxy.client().list_object_versions(Bucket=name)
    sizes = {v["Key"]: v["Size"] for v in resp.get("Versions", [])}
    assert sizes == {key: len(body) for key, body in data.items()}


def test_listing_missing_bucket(proxy):
    with pytest.raises(ClientError) as info:
        proxy.client().list_objects_v2(Bucket="missing-" + uuid.uuid4().hex[:12])
    assert (status(info.value), code(info.value)) == (404, "NoSuchBucket")


def test_foreign_objects_in_listings_follow_the_documented_policy(proxy, seaweedfs, bucket):
    """Objects put straight into SeaweedFS: a listing cannot tell them from encrypted ones, so
    (docs/FORMAT.md, "Objects the proxy did not encrypt") a size that is a valid stored size
    is listed as if encrypted, any other size as it is; HEAD and GET always know better."""
    from trios3.core import format as fmt
    from trios3.core.etag import client_etag

    client = proxy.client()
    prefix = "foreign-" + uuid.uuid4().hex[:8] + "/"
    for size in (10, 100):  # 10 is no valid stored size; 100 is (84 plaintext bytes)
        seaweedfs.client().put_object(Bucket=bucket, Key=f"{prefix}{size}", Body=os.urandom(size))
    listed = {e["Key"]: e for e in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert fmt.plaintext_size(10, fmt.DEFAULT_SEGMENT_SIZE) is None
    for size in (10, 100):
        entry = listed[f"{prefix}{size}"]
        head = client.head_object(Bucket=bucket, Key=f"{prefix}{size}")
        assert head["ContentLength"] == size
        as_if_encrypted = fmt.plaintext_size(size, fmt.DEFAULT_SEGMENT_SIZE)
        expected = size if as_if_encrypted is None else as_if_encrypted
        assert entry["Size"] == expected
        assert entry["ETag"] == client_etag(head["ETag"], as_if_encrypted is not None)


# -- DeleteObjects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("quiet", [False, True])
def test_delete_objects(proxy, seaweedfs, bucket, quiet):
    client = proxy.client()
    prefix = f"del-{quiet}-{uuid.uuid4().hex[:8]}/"
    keys = [f"{prefix}{i}" for i in range(4)] + [f"{prefix}odd key+%"]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"bye")
    survivor = f"{prefix}survivor"
    client.put_object(Bucket=bucket, Key=survivor, Body=b"stay")
    missing = f"{prefix}never-existed"
    resp = client.delete_objects(
        Bucket=bucket,
        Delete={"Objects": [{"Key": k} for k in [*keys, missing]], "Quiet": quiet},
    )
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert resp.get("Errors", []) == []
    if quiet:
        assert resp.get("Deleted", []) == []
    else:
        assert sorted(d["Key"] for d in resp["Deleted"]) == sorted([*keys, missing])
    remaining = seaweedfs.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    assert [c["Key"] for c in remaining["Contents"]] == [survivor]
    assert client.get_object(Bucket=bucket, Key=survivor)["Body"].read() == b"stay"


# -- subresources ----------------------------------------------------------------------------------


def test_bucket_versioning_get_passthrough(proxy, seaweedfs, bucket):
    mine = _strip_meta(proxy.client().get_bucket_versioning(Bucket=bucket))
    theirs = _strip_meta(seaweedfs.client().get_bucket_versioning(Bucket=bucket))
    assert mine == theirs


def test_bucket_tagging(proxy, seaweedfs):
    client = proxy.client()
    name = "tags-" + uuid.uuid4().hex[:16]
    client.create_bucket(Bucket=name)
    try:
        with pytest.raises(ClientError) as mine:
            client.get_bucket_tagging(Bucket=name)
        with pytest.raises(ClientError) as theirs:
            seaweedfs.client().get_bucket_tagging(Bucket=name)
        assert (status(mine.value), code(mine.value)) == (
            status(theirs.value),
            code(theirs.value),
        )
        tags = [{"Key": "team", "Value": "crypto"}, {"Key": "env", "Value": "test"}]
        client.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tags})
        got = client.get_bucket_tagging(Bucket=name)["TagSet"]
        assert sorted(got, key=lambda t: t["Key"]) == sorted(tags, key=lambda t: t["Key"])
        direct = seaweedfs.client().get_bucket_tagging(Bucket=name)["TagSet"]
        assert sorted(direct, key=lambda t: t["Key"]) == sorted(tags, key=lambda t: t["Key"])
    finally:
        client.delete_bucket(Bucket=name)


def test_object_tagging(proxy, seaweedfs, bucket):
    client = proxy.client()
    key = "tagged-" + uuid.uuid4().hex[:8]
    client.put_object(Bucket=bucket, Key=key, Body=b"tagged", Tagging="colour=blue&size=s")
    tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("colour", "blue"), ("size", "s")]

    client.put_object_tagging(
        Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": "state", "Value": "new"}]}
    )
    tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert tags == [{"Key": "state", "Value": "new"}]
    direct = seaweedfs.client().get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert direct == tags
    # Tagging does not disturb the encrypted body or its envelope.
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"tagged"
