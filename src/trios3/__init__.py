"""trios3: a transparent client-side-encrypting S3 proxy on trio."""

__version__ = "0.1.0"
