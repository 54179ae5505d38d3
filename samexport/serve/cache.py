"""The embedding cache: image embeddings by the sha256 of the uploaded bytes, least recently used
out once a byte budget is spent.

The key is the digest of the exact bytes a client sent, so two different files never share an
entry (re-encoding the same picture gives a new key: a miss, never a wrong hit), and each entry
also keeps the sizes it was encoded at, so a prompt is always decoded against the image it names.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


def image_id(data: bytes) -> str:
    """The id of an uploaded image: the hex sha256 of its bytes (64 characters)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CachedImage:
    """One encoded image.

    Attributes:
        image_id: hex sha256 of the bytes the client sent.
        embedding: 1x256x64x64 float32 image embedding (read-only).
        original_size: ``(H, W)`` of the decoded image, pixels.
        input_size: ``(h, w)`` of the image resized into the 1024 frame.
        encode_ms: how long the encoder took for it.
    """

    image_id: str
    embedding: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    encode_ms: float

    @property
    def nbytes(self) -> int:
        return int(self.embedding.nbytes)

    def ref(self) -> ImageRef:
        """This entry without its embedding (what a front that does not decode needs)."""
        return ImageRef(self.image_id, self.original_size, self.input_size, self.encode_ms)


@dataclass(frozen=True)
class ImageRef:
    """A cached image's id and sizes, without the embedding (see :class:`CachedImage`)."""

    image_id: str
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    encode_ms: float


class EmbeddingCache:
    """A thread-safe LRU map ``image_id -> CachedImage`` holding at most ``budget_bytes`` of
    embeddings. An entry larger than the whole budget is not kept (a budget of 0 keeps nothing).
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0; got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> CachedImage | None:
        """The entry for ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, entry: CachedImage) -> bool:
        """Keep ``entry``, evicting the least recently used ones to fit; False if it cannot fit."""
        if entry.nbytes > self.budget_bytes:
            return False
        with self._lock:
            old = self._entries.pop(entry.image_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._entries and self._bytes + entry.nbytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            self._entries[entry.image_id] = entry
            self._bytes += entry.nbytes
            return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries), "bytes": self._bytes, "budget_bytes": self.budget_bytes,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
            }
