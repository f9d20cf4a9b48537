"""A readers-writer lock for objects that many threads may read while one occasionally rewrites them.

:class:`~fewshotcx.segmenter.Segmenter` uses it so that several threads can predict with one fitted
segmenter at once, while ``fit``/``complete`` wait for running predictions and block new ones.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ReadWriteLock:
    """Many readers or one writer. The writer may re-enter (as writer or reader) from its own thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Shared access; waits while another thread writes."""
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:  # the writer reads its own state
                self._depth += 1
            else:
                self._cond.wait_for(lambda: self._writer is None)
                self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                if self._writer == me:
                    self._depth -= 1
                else:
                    self._readers -= 1
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive access; waits for running readers and writers to finish."""
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                self._cond.wait_for(lambda: self._writer is None and self._readers == 0)
                self._writer = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    self._cond.notify_all()


def reads(method: F) -> F:
    """Run ``method`` holding ``self._lock.reading()``."""
    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock.reading():
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


def writes(method: F) -> F:
    """Run ``method`` holding ``self._lock.writing()``."""
    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock.writing():
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]
