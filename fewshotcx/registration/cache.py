"""A bounded, thread-safe memo of support volumes registered onto queries.

Registration is the dearest step of the registered/auto strategies and of the atlas backends, and it
depends only on (support volume, query, seed, mode): never on which support slices a draw then uses.
One cache per fitted support lets every prediction of the same query (``predict_proba`` then
``predict``, each draw of ``predict_uncertainty``, review, a contouring session's updates) register
each support volume once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Union

from .convert import RegistrationError
from .onto_query import RegisteredVolume

#: Bytes of registered support a cache keeps (least recently used evicted first).
DEFAULT_CACHE_BYTES = 512 << 20


class RegistrationCache(OrderedDict):
    """Registered support volumes (or the :class:`RegistrationError` a failed one raised) by
    ``(index, query fingerprint, seed, mode)``, least recently used first, holding at most ``max_bytes``
    of arrays (the newest entry is always kept, even if larger).

    Safe to share between threads (its own lock): every prediction with one fitted value shares its memo.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__()
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held."""
        with self._lock:
            return sum(_nbytes(entry) for entry in self.values())

    def get(self, key, default=None):
        with self._lock:
            if key not in self:
                return default
            self.move_to_end(key)
            return super().__getitem__(key)

    def __setitem__(self, key, entry: Union[RegisteredVolume, RegistrationError]) -> None:
        with self._lock:
            super().__setitem__(key, entry)
            self.move_to_end(key)
            while len(self) > 1 and sum(_nbytes(e) for e in self.values()) > self.max_bytes:
                self.popitem(last=False)


def _nbytes(entry: Union[RegisteredVolume, RegistrationError]) -> int:
    """Bytes an entry holds (a remembered failure holds none)."""
    return 0 if isinstance(entry, RegistrationError) else int(entry.nbytes)
