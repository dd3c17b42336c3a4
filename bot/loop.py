"""The event loop the service runs on.

uvloop (libuv under asyncio's interface) where it is installed: it serves aiohttp's requests and
the ledger's thread hand-offs with less CPU than asyncio's own loop, about 15 % more intake per
core in `python -m bot bench`. `EVENT_LOOP=asyncio` runs on asyncio's loop instead (both are
tested); `EVENT_LOOP=uvloop` insists on uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bot.config import ConfigError

T = TypeVar("T")

CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory of new loops for `choice`, or None for asyncio's default."""
    if choice not in CHOICES:
        raise ConfigError(f"EVENT_LOOP={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "EVENT_LOOP=uvloop, but uvloop is not installed here (it has no Windows build); "
                "install it, or set EVENT_LOOP=auto"
            ) from None
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """`asyncio.run(main)` on the loop `choice` names."""
    try:
        factory = loop_factory(choice)
    except BaseException:
        main.close()  # never awaited: say so quietly rather than with a warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def new_loop(choice: str = "auto") -> asyncio.AbstractEventLoop:
    factory = loop_factory(choice)
    return factory() if factory is not None else asyncio.new_event_loop()
