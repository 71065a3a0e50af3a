"""AWS's documented example of a signed aws-chunked upload (the SigV4 streaming examples):
its secret, scope, date, seed signature and body, shared by the tests that decode it."""

from trios3.core.sigv4 import SigningScope, derive_signing_key

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SCOPE = SigningScope("20130524", "us-east-1", "s3")
DATE = "20130524T000000Z"
KEY = derive_signing_key(SECRET, SCOPE)
BODY = b"a" * 66560

SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
SIGNED = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
    + b"a" * 65536
    + b"\r\n"
    + b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
    + b"a" * 1024
    + b"\r\n"
    + b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n"
    + b"\r\n"
)
