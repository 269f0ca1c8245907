"""Synchronous answers over Kafka: an ingress publishes a command and waits for its outcome,
which a consumer publishes on the replies topic with the command's id.

Each ingress process reads every partition of the replies topic from the end (no consumer
group: every instance sees every reply) and resolves its own waiters. A waiting request costs
one future and one timer, not a task or a connection of its own, so thousands can wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from notaflow.bus import client_options
from notaflow.envelope import decode
from notaflow.errors import InvalidDocument
from notaflow.settings import Settings

log = logging.getLogger(__name__)


class ReplyWaiters:
    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def register(self, command_id: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        return future

    def forget(self, command_id: str) -> None:
        self._waiting.pop(command_id, None)

    def resolve(self, command_id: str, data: dict[str, Any]) -> bool:
        future = self._waiting.pop(command_id, None)
        if future is None or future.done():
            return False
        future.set_result(data)
        return True

    async def wait(self, command_id: str, timeout: float) -> dict[str, Any] | None:
        """The reply, or None when `timeout` passes first."""
        future = self._waiting.get(command_id) or self.register(command_id)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            self.forget(command_id)


class ReplyListener:
    def __init__(self, settings: Settings, topic: str, waiters: ReplyWaiters) -> None:
        self._settings = settings
        self._topic = topic
        self._waiters = waiters
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reply-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(**client_options(self._settings), enable_auto_commit=False)
            try:
                await consumer.start()
                partitions = consumer.partitions_for_topic(self._topic)
                if not partitions:
                    await consumer._client.force_metadata_update()
                    partitions = consumer.partitions_for_topic(self._topic)
                if not partitions:
                    raise KafkaError(f"topic {self._topic} not found")
                tps = [TopicPartition(self._topic, p) for p in partitions]
                consumer.assign(tps)
                await consumer.seek_to_end(*tps)
                for tp in tps:  # resolve the lazy seek now, so nothing published later is missed
                    await consumer.position(tp)
                self.ready.set()
                while True:
                    batches = await consumer.getmany(timeout_ms=500)
                    for records in batches.values():
                        for record in records:
                            self._dispatch(record)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                self.ready.clear()
                log.warning("reply listener: %r; reconnecting", exc)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    def _dispatch(self, record: Any) -> None:
        try:
            event = decode(record.headers, record.value)
        except InvalidDocument:
            return
        command_id = event.data.get("command_id")
        if isinstance(command_id, str):
            self._waiters.resolve(command_id, event.data)
