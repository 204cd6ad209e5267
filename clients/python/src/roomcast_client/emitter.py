"""on/off/once listeners, shared by the client and its rooms."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Self

log = logging.getLogger("roomcast.client")

Callback = Callable[..., object]


class Emitter:
    """on/off/once with callbacks called in order; a callback may be a coroutine function
    (its coroutine then runs as a task). A failing callback is reported, never fatal."""

    _names: tuple[str, ...] = ()

    def __init__(self, tasks: set[asyncio.Task[Any]]) -> None:
        self._handlers: dict[str, list[Callback]] = {name: [] for name in self._names}
        self._tasks = tasks

    def on(self, name: str, callback: Callback) -> Self:
        if name not in self._handlers:
            raise ValueError(f"unknown event {name!r}; use one of {', '.join(self._handlers)}")
        self._handlers[name].append(callback)
        return self

    def off(self, name: str, callback: Callback) -> Self:
        handlers = self._handlers.get(name, [])
        for i, cb in enumerate(handlers):
            if cb is callback or getattr(cb, "__wrapped__", None) is callback:
                del handlers[i]
                break
        return self

    def once(self, name: str, callback: Callback) -> Self:
        def wrapper(*args: Any) -> object:
            self.off(name, wrapper)
            return callback(*args)

        wrapper.__wrapped__ = callback  # type: ignore[attr-defined]
        return self.on(name, wrapper)

    def _emit(self, name: str, *args: Any) -> None:
        for callback in list(self._handlers[name]):
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._callback_done(name))
            except Exception as exc:
                self._listener_failed(name, exc)

    def _callback_done(self, name: str) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                assert isinstance(exc, Exception)
                self._listener_failed(name, exc)

        return done

    def _listener_failed(self, name: str, exc: Exception) -> None:
        log.error("roomcast: a %r listener failed", name, exc_info=exc)
