"""Billing in the consumers, one module per topic:

- `events.BillingEvents` (consumer `billing`, topic billing.events): applies invoice events to
  the read model; one invoice's events share a key, so they arrive in order per partition, and
  the precedence rules of `notaflow.billing` make reordering across producers and duplicates
  harmless. An invalid event is a Permanent (dead-letter topic).
- `mail.BillingMailer` (run by the notification consumer, topic billing.commands): sends an
  already-rendered invoice e-mail, with the invoice PDF attached on request, once per command:
  the delivery row keyed by the command id is found again on redelivery.
- `dunning.DunningJob` (`notaflow dunning`, one-shot, publishes to billing.commands):
  reminders for invoices past due at the tenant's steps; each (invoice, step) is claimed by a
  unique row before its command is published, so concurrent replicas and repeated runs send
  each step once.
"""

from notaflow.consumers.billing.dunning import DunningJob
from notaflow.consumers.billing.events import BillingEvents
from notaflow.consumers.billing.mail import BillingMailer

__all__ = ["BillingEvents", "BillingMailer", "DunningJob"]
