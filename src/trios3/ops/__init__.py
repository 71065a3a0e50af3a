"""The S3 operations: each streams bytes between client and backend and owns what it holds."""
