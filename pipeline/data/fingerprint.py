"""Fingerprints of raw inputs: one sha256 that names the exact data a cache was built from.

The digest covers, in cache order, every item's name, label and file bytes (as the sha256 of the
bytes, computed by the decoding workers while they read the file), preceded by the settings
that change the cache (image size, channels, policies, split fraction and seed, ...). It does not
cover where the data lives or how many workers decoded it, so the same data prepared the same way
on another machine gives the same fingerprint, and one changed pixel gives a different one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

FINGERPRINT_VERSION = 1
# Stands in for the bytes of a listed file that does not exist (skipped under on_bad_file: skip).
MISSING_DIGEST = bytes(32)


def file_digest(data: bytes) -> bytes:
    """The per-file digest fed to :class:`Fingerprint` (raw sha256, 32 bytes)."""
    return hashlib.sha256(data).digest()


def _item(name: str, label: str) -> bytes:
    # Length-prefixed so that no two different (name, label) sequences hash alike.
    return f"{len(name)}:{name}\t{len(label)}:{label}\n".encode()


class Fingerprint:
    """Incremental sha256 over the settings and then each (name, label, file digest)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self._hash = hashlib.sha256()
        header = {"fingerprint_version": FINGERPRINT_VERSION, "settings": dict(settings)}
        self._hash.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
        self._hash.update(b"\n")

    def add(self, name: str, label: str, digest: bytes) -> None:
        """Add one raw item. ``digest`` is :func:`file_digest` of its bytes."""
        self._hash.update(_item(name, label) + digest)

    def add_many(
        self, names: Sequence[str], labels: Sequence[str], digests: Sequence[bytes]
    ) -> None:
        """:meth:`add` for each item, in one hash update (the same digest, less overhead)."""
        self._hash.update(
            b"".join(
                _item(name, label) + digest
                for name, label, digest in zip(names, labels, digests, strict=True)
            )
        )

    def add_bytes(self, name: str, data: bytes) -> None:
        """Add a whole raw file (e.g. a CSV table)."""
        self.add(name, "", file_digest(data))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
