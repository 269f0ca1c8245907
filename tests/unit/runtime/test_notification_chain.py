"""The in-memory bus carries a note from its command to the notification consumer: the
lifecycle events the emission consumer publishes are delivered to the NotificationConsumer's
routes, which keep one delivery row per (event, recipient) however often the event comes."""

from __future__ import annotations

from notaflow.consumers.notification import NotificationConsumer, NotificationSettings
from notaflow.consumers.providers.webhooks import WebhookSender
from notaflow.lifecycle import AUTHORIZED, focus_ref
from notaflow.store import DeliveryStore, HookStore
from tests.unit.runtime.conftest import World


async def test_an_authorized_note_reaches_the_notification_consumer_once(world: World) -> None:
    engine = world.engine
    deliveries = DeliveryStore(engine)
    webhooks = WebhookSender()
    notification = NotificationConsumer(
        world.docs,
        world.tenants,
        HookStore(engine),
        deliveries,
        None,  # no SMTP server: the attempt is recorded as failed, and not retried
        webhooks,
        world.bus,
        world.topics,
        NotificationSettings(public_url="http://notaflow.test", hook_schedule=()),
    ).routes()
    try:
        event = world.emit_command("r1")
        doc = await world.claim("r1", event)
        await world.command(event)
        await world.callback(await world.at_focus(focus_ref(doc.id, doc.attempt), AUTHORIZED))
        assert await world.bus.drain(notification) == 2  # processando, autorizado
        authorized = world.bus.records(world.topics.lifecycle)[-1]
        await world.bus.deliver(notification, authorized)  # a redelivery
        address = world.nfse()["tomador"]["email"]
        row = await deliveries.by_key(f"email:{authorized.event().id}:{address}")
        assert row is not None and row.attempts == 1
        assert row.last_error == "nenhum servidor SMTP configurado"
    finally:
        await webhooks.aclose()
