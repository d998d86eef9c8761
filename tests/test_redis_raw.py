"""The pipelined version reads of the replicas (app/redis_raw.py) against a real redis-server: a read
never shares an MGET that was sent before it was asked for, reads of one loop turn share one, and a
Redis that is away, slow or refuses the password fails the reads at once and is reconnected later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.coherence import SharedStateUnavailable, _unavailable
from app.redis_raw import PipelinedReader, encode, parse
from tests.helpers.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def mget_calls(redis_server: RedisServer) -> int:
    stats = redis_server.cli("INFO", "commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


async def test_a_read_never_takes_the_answer_of_an_mget_sent_before_it(redis_server: RedisServer) -> None:
    reader = PipelinedReader(redis_server.url)
    try:
        redis_server.cli("SET", "v", "1")
        assert await reader.read("v") == "1"  # connected
        early = reader.read("v")
        await asyncio.sleep(0)  # the end of the turn: its MGET is written
        await asyncio.sleep(0)
        # The loop is blocked here, as if the write answered its client while that MGET is on its way.
        redis_server.cli("INCR", "v")
        late = reader.read("v")
        assert await early == "1"
        assert await late == "2"
    finally:
        await reader.close()


async def test_reads_of_one_turn_share_one_mget_and_absent_keys_are_none(redis_server: RedisServer) -> None:
    reader = PipelinedReader(redis_server.url)
    try:
        redis_server.cli("SET", "a", "7")
        assert await reader.read("a") == "7"
        before = mget_calls(redis_server)
        values = await asyncio.gather(*(reader.read(key) for key in ["a", "b"] * 25))
        assert values == ["7", None] * 25
        assert mget_calls(redis_server) - before == 1
    finally:
        await reader.close()


async def test_redis_away_fails_the_reads_and_they_recover_when_it_returns(redis_server: RedisServer) -> None:
    reader = PipelinedReader(redis_server.url, timeout=1.0, failure=_unavailable)
    try:
        redis_server.cli("SET", "v", "3")
        assert await reader.read("v") == "3"
        redis_server.stop()
        for _ in range(2):  # the connection that broke, then a connect that is refused
            with pytest.raises(SharedStateUnavailable):
                await asyncio.wait_for(reader.read("v"), 5)
        redis_server.start()
        assert await asyncio.wait_for(reader.read("v"), 5) is None  # back, and empty
    finally:
        await reader.close()


async def test_a_redis_that_does_not_answer_fails_the_reads_within_the_timeout(
        redis_server: RedisServer) -> None:
    reader = PipelinedReader(redis_server.url, timeout=0.5)
    try:
        assert await reader.read("v") is None
        sleeper = asyncio.get_running_loop().run_in_executor(None, redis_server.cli, "DEBUG", "SLEEP", "2")
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read("v"), 5)
        assert time.monotonic() - started < 1.5
        await sleeper
        redis_server.cli("SET", "v", "9")
        assert await reader.read("v") == "9"  # a new connection
    finally:
        await reader.close()


async def test_password_and_database_come_from_the_url(redis_server: RedisServer) -> None:
    redis_server.cli("CONFIG", "SET", "requirepass", "p@ss")
    import redis

    admin = redis.Redis(host="127.0.0.1", port=redis_server.port, password="p@ss", db=3)
    admin.set("v", "db3")
    admin.close()
    base = f"redis://:p%40ss@127.0.0.1:{redis_server.port}"
    reader = PipelinedReader(f"{base}/3")
    wrong = PipelinedReader(f"redis://:nope@127.0.0.1:{redis_server.port}/3")
    try:
        assert await reader.read("v") == "db3"
        with pytest.raises(ConnectionError, match="setup"):
            await asyncio.wait_for(wrong.read("v"), 5)
    finally:
        await reader.close()
        await wrong.close()


def test_replies_are_parsed_whole_or_not_at_all() -> None:
    reply = b"*3\r\n$1\r\n5\r\n$-1\r\n$2\r\n12\r\n:4\r\n"
    assert parse(reply, 0) == ([b"5", None, b"12"], len(reply) - 4)
    assert parse(reply, len(reply) - 4) == (4, len(reply))
    for cut in range(1, len(reply) - 4):
        assert parse(reply[:cut], 0) is None
    assert encode("MGET", "a", "bé") == b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$3\r\nb\xc3\xa9\r\n"
