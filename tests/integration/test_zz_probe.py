import pytest
from botocore.exceptions import ClientError

def g(c, b, k, r):
    try:
        resp = c.get_object(Bucket=b, Key=k, Range=r)
        return (resp["ResponseMetadata"]["HTTPStatusCode"], resp.get("ContentRange"), len(resp["Body"].read()))
    except ClientError as e:
        return (e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPHeaders"].get("content-range"))

def test_probe(seaweedfs, proxy, bucket):
    s = seaweedfs.client(); p = proxy.client()
    s.put_object(Bucket=bucket, Key="raw", Body=b"a"*100)
    s.put_object(Bucket=bucket, Key="empty", Body=b"")
    p.put_object(Bucket=bucket, Key="enc", Body=b"a"*100)
    p.put_object(Bucket=bucket, Key="encempty", Body=b"")
    for r in ["bytes=0-9", "bytes=90-", "bytes=-10", "bytes=-200", "bytes=0-0", "bytes=50-500", "bytes=100-", "bytes=200-300", "bytes=-0", "bytes=abc", "bytes=5-2", "bytes=0-1,5-6"]:
        print(r, g(s, bucket, "raw", r), g(p, bucket, "enc", r))
    for r in ["bytes=0-0", "bytes=-5", "bytes=0-", "bytes=-0"]:
        print("empty", r, g(s, bucket, "empty", r), g(p, bucket, "encempty", r))
    h = s.head_object(Bucket=bucket, Key="raw")
    print(h["ResponseMetadata"]["HTTPHeaders"])
    import datetime
    for kw in [dict(IfMatch='"nope"'), dict(IfNoneMatch=h["ETag"]), dict(IfModifiedSince=datetime.datetime(2100,1,1)), dict(IfUnmodifiedSince=datetime.datetime(2000,1,1))]:
        for fn in (s.get_object, s.head_object):
            try:
                r = fn(Bucket=bucket, Key="raw", **kw); print(kw, fn.__name__, r["ResponseMetadata"]["HTTPStatusCode"])
            except ClientError as e:
                print(kw, fn.__name__, e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"])
    r = s.get_object(Bucket=bucket, Key="raw", PartNumber=1); print("part1", r["ResponseMetadata"]["HTTPStatusCode"], r.get("ContentRange"))
    r = p.get_object(Bucket=bucket, Key="enc", PartNumber=1); print("ppart1", r["ResponseMetadata"]["HTTPStatusCode"], r.get("ContentRange"))
    r = s.get_object(Bucket=bucket, Key="enc"); print("stored", r["ResponseMetadata"]["HTTPHeaders"])
    print(s.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"][0])
    print(s.get_bucket_versioning(Bucket=bucket))
    try: print(s.get_bucket_tagging(Bucket=bucket))
    except ClientError as e: print(e.response["Error"], e.response["ResponseMetadata"]["HTTPStatusCode"])
    assert 0
