"""A small TCP proxy on loopback, between workers and the broker, that the test can make
slow, block or cut: the network faults of the battery, without root or tc/netem.

It runs its own event loop in a thread, so the test's loop (the load generator) is
never slowed by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any


class Proxy:
    def __init__(self, target_port: int, listen_port: int = 0) -> None:
        self.target_port = target_port
        self.delay = 0.0  # seconds added to every chunk, each way
        self.blocked = False  # hold the bytes (connections stay open, nothing moves)
        self.refusing = False  # new connections are closed at once
        self._loop = asyncio.new_event_loop()
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        sock = socket.socket()
        sock.bind(("127.0.0.1", listen_port))
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._call(self._serve())

    def stop(self) -> None:
        self._call(self._close(all_too=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # --- faults ------------------------------------------------------------------------
    def slow(self, delay: float) -> None:
        self.delay = delay

    def block(self) -> None:
        self.blocked = True

    def cut(self) -> None:
        """Close every connection and refuse new ones (a partition that resets)."""
        self.refusing = True
        self._call(self._close())

    def heal(self) -> None:
        self.delay, self.blocked, self.refusing = 0.0, False, False

    # --- internals ---------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._accept, sock=self._sock)

    async def _close(self, all_too: bool = False) -> None:
        for writer in list(self._conns):
            writer.transport.abort()
        self._conns.clear()
        if all_too and self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._conns.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._conns.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            while self.blocked and not writer.is_closing():  # noqa: ASYNC110 - polled from a thread
                await asyncio.sleep(0.05)
            if self.delay:
                await asyncio.sleep(self.delay)
            if writer.is_closing():
                break
            writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        writer.transport.abort()
