"""credsync: publish credentials dropped into an upload folder into a consumer's volume,
atomically, with the owner and mode the consumer needs."""

__version__ = "0.1.0"
__all__ = ["__version__"]
