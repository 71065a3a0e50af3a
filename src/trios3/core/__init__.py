"""The sans-IO core: protocol, format and arithmetic, tested with plain data.

Nothing under this package imports trio, httpx or does I/O.
"""
