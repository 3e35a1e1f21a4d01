"""The TCP proxy fixture itself: relays bytes, cuts live connections, refuses, restores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tcp_proxy import TcpProxies, TcpProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, host="127.0.0.1", port=0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def _roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()


async def test_relays_bytes_both_ways(echo_port: int) -> None:
    async with TcpProxy("127.0.0.1", echo_port) as proxy:
        assert proxy.port not in (0, echo_port)
        payload = bytes(range(256)) * 1000  # larger than one read
        assert await _roundtrip(proxy.port, payload) == payload
        assert proxy.accepted == 1


async def test_cut_drops_live_connections_and_refuses_new_ones(echo_port: int) -> None:
    async with TcpProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        assert proxy.live == 1

        await proxy.cut()
        assert proxy.is_cut
        assert proxy.live == 0
        # The live connection is gone: the client reads EOF or a reset, never an echo.
        try:
            data = await asyncio.wait_for(reader.read(1024), 5)
        except ConnectionError:
            data = b""
        assert data == b""
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)

        port = proxy.port
        await proxy.restore()
        assert proxy.port == port
        assert await _roundtrip(proxy.port, b"back") == b"back"


async def test_unreachable_target_closes_the_client() -> None:
    probe = await asyncio.start_server(_echo, host="127.0.0.1", port=0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with TcpProxy("127.0.0.1", dead_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            data = await asyncio.wait_for(reader.read(1024), 5)
        except ConnectionError:
            data = b""
        assert data == b""
        writer.close()
        assert proxy.accepted == 0


async def test_fixture_makes_proxies_and_closes_them(tcp_proxy: TcpProxies, echo_port: int) -> None:
    first = await tcp_proxy("127.0.0.1", echo_port)
    second = await tcp_proxy("127.0.0.1", echo_port)
    assert first.port != second.port
    assert await _roundtrip(second.port, b"two") == b"two"
    await first.cut()
    assert await _roundtrip(second.port, b"still") == b"still"
