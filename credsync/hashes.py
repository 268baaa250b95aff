"""How a content hash is shown: a prefix long enough to tell versions apart, too short to
matter (the hash of a secret is no secret, but the whole of it is not needed anywhere)."""

HASH_PREFIX = 12


def short_hash(sha256_hex: str) -> str:
    return sha256_hex[:HASH_PREFIX]
