"""Outbound webhooks: deliver a note's status change to the client's registered URLs.

Focus NFe compatible (a JSON POST carrying the static `authorization` value in the configured
header; done on any 2xx, otherwise retried after 1 min, 30 min, 1 h, 3 h and 24 h), plus a
Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`) so receivers
can prove the sender and deduplicate on `webhook-id`, which stays the same across retries.

One module per job, as Svix splits them:

    notaflow.webhook_signing   the signatures and the secrets (core: the ingress makes secrets)
    policy                     the SSRF policy at delivery time (the rules: notaflow.destinations)
    schedule                   when a failed delivery is tried again
    sender                     one attempt over HTTP, pinned to the checked addresses

Errors:

    DestinationRefused (Permanent)          the URL or its addresses break the SSRF policy
    WebhookVerificationError                a signature check failed (receiver side)
"""

from notaflow.consumers.providers.webhooks.policy import (
    DestinationRefused,
    check_destination,
    resolve_and_check,
)
from notaflow.consumers.providers.webhooks.schedule import RETRY_SCHEDULE, next_attempt_delay
from notaflow.consumers.providers.webhooks.sender import DeliveryResult, HookTarget, WebhookSender

__all__ = [
    "RETRY_SCHEDULE",
    "DeliveryResult",
    "DestinationRefused",
    "HookTarget",
    "WebhookSender",
    "check_destination",
    "next_attempt_delay",
    "resolve_and_check",
]
