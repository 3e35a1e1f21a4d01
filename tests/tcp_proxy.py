"""A TCP proxy between spawnpoint and a real server (RabbitMQ, Redis, PostgreSQL) for tests.

    async with TcpProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        ...
        await proxy.cut()      # live connections are reset, new ones are refused
        await proxy.restore()  # the same port accepts connections again

`cut()` aborts both sides of every connection (the client sees a reset, as when the server
goes away) and closes the listening socket, so a reconnect attempt gets "connection refused"
until `restore()` listens again on the same port. The `tcp_proxy` fixture in conftest.py is a
factory of proxies closed at the end of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.accepted = 0  # connections accepted since start, for tests of the proxy's user
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.BaseTransport] = set()

    @property
    def is_cut(self) -> bool:
        return self._server is None

    @property
    def live(self) -> int:
        """Connections currently relayed (each counted once, not per direction)."""
        return len(self._pipes)

    async def start(self) -> TcpProxy:
        await self._listen()
        return self

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def cut(self) -> None:
        """Drop every live connection and refuse new ones until `restore()`."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._abort_all()
        await self._drain_pipes()
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Accept connections again, on the same port."""
        if self._server is None:
            await self._listen()

    async def close(self) -> None:
        await self.cut()

    async def _listen(self) -> None:
        # reuse_address (asyncio's default on Unix) lets the same port be bound again at once.
        self._server = await asyncio.start_server(
            self._handle, host=self.host, port=self.port, reuse_address=True
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    def _abort_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _drain_pipes(self) -> None:
        pipes = list(self._pipes)
        for task in pipes:
            task.cancel()
        for task in pipes:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just as the proxy was cut
            client_w.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._transports.add(client_w.transport)
        try:
            upstream_r, upstream_w = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            self._transports.discard(client_w.transport)
            client_w.transport.abort()
            return
        if self._server is None:
            upstream_w.transport.abort()
            client_w.transport.abort()
            return
        self.accepted += 1
        self._transports.add(upstream_w.transport)
        self._pipes.add(task)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_pump(client_r, upstream_w))
                group.create_task(_pump(upstream_r, client_w))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pipes.discard(task)
            for writer in (client_w, upstream_w):
                self._transports.discard(writer.transport)
                writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until EOF, then pass the half-close on."""
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


class TcpProxies:
    """The `tcp_proxy` fixture: `await tcp_proxy(host, port)`; every proxy closed at the end."""

    def __init__(self) -> None:
        self._proxies: list[TcpProxy] = []

    async def __call__(self, target_host: str, target_port: int) -> TcpProxy:
        proxy = await TcpProxy(target_host, target_port).start()
        self._proxies.append(proxy)
        return proxy

    async def close(self) -> None:
        for proxy in self._proxies:
            await proxy.close()


@contextlib.asynccontextmanager
async def tcp_proxies() -> AsyncIterator[TcpProxies]:
    proxies = TcpProxies()
    try:
        yield proxies
    finally:
        await proxies.close()
