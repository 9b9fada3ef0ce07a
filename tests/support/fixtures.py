"""Plumbing for factory fixtures: start things, close them all at teardown."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any


@contextlib.asynccontextmanager
async def factory(
    start: Callable[..., Awaitable[Any]], close: Callable[[Any], Any] = lambda t: t.close()
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """The body of a factory fixture: yields `make(...)`, which starts a thing
    with `start(...)`; at teardown every thing made is closed, in order."""
    started: list = []

    async def make(*args: Any, **kwargs: Any) -> Any:
        thing = await start(*args, **kwargs)
        started.append(thing)
        return thing

    try:
        yield make
    finally:
        for thing in started:
            result = close(thing)
            if inspect.isawaitable(result):
                await result
