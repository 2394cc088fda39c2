"""Run-time state: every cache that a call's path fills, in one registry, cleared in one place.

A call of `scaled_mm` reads config files, plans, and binds launches once per signature and keeps
what it worked out. Each of those caches registers here, so `scaledmm.clear_cache()` (this module's
`clear`) forgets all of them at once: after a new file in SCALEDMM_CONFIG_DIR, a changed
SCALEDMM_DISABLED_BACKENDS or a new shipped file, the next call reads them again. The caches, in the
order a first call fills them (docs/design.md, "Run-time state"):

- configs.lookup: the disabled backends, the device's name and limits, the index of config files,
  the candidate files per shape, each file's table, the plans;
- kernels: whether a device has TMA;
- runtime: the prepared calls per signature, and the generation that layers' prepared forwards
  (nn) compare against, so theirs go stale too.

Split-K's arrival counts are not a cache: CUDA graphs keep their addresses, so they live for the
process (kernels/split_k.py).

This module imports nothing of scaledmm: every layer may register here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class RuntimeState:
    """The registry: named caches, each with the function that empties it, and a generation number
    that grows by one per `clear()` (objects that keep prepared work compare it instead of
    registering themselves)."""

    def __init__(self) -> None:
        self._clearers: dict[str, Callable[[], None]] = {}
        self.generation = 0

    def register(self, name: str, clear: Callable[[], None]) -> None:
        """Have `clear()` call `clear` (registering a name again replaces its clearer)."""
        self._clearers[name] = clear

    def cached(self, function: F | None = None, *, maxsize: int | None = None) -> F:
        """`functools.lru_cache(maxsize)` (unbounded by default), registered under the function's
        qualified name."""

        def wrap(function: F) -> F:
            wrapped = functools.lru_cache(maxsize=maxsize)(function)
            self.register(f"{function.__module__}.{function.__qualname__}", wrapped.cache_clear)
            return wrapped  # type: ignore[return-value]

        return wrap(function) if function is not None else wrap  # type: ignore[return-value]

    def names(self) -> list[str]:
        """The registered caches, in registration order."""
        return list(self._clearers)

    def clear(self) -> None:
        for clear in self._clearers.values():
            clear()
        self.generation += 1


state = RuntimeState()
