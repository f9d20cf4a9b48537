"""Old spellings that keep working for one release, with a :class:`DeprecationWarning` naming the new one."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """A decorator: keyword ``old=`` is passed on as ``renames[old]=``, with a DeprecationWarning.

    Raises:
        TypeError: the old and the new name are both given.
    """
    def decorate(func: F) -> F:
        name = func.__qualname__.removesuffix(".__init__")  # a class is named for its constructor

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{name}() got both {old}= and {new}= (use {new}=)")
                    warn_renamed(f"{name}({old}=)", f"{new}=")
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (removed in the next minor release)."""
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)


class CallableTuple(tuple):
    """What a property returns where a method was before: a tuple that may still be called (returning
    itself as a plain tuple) for one release, with a DeprecationWarning naming :attr:`old`."""

    #: The property's qualified name, e.g. ``"ContourSession.classes"``.
    old = "this property"

    def __call__(self) -> tuple:
        warn_renamed(f"{self.old}()", f"the property {self.old} (no call)")
        return tuple(self)
