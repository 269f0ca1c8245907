"""State: documents with their status history, tenants and credentials, blobs."""

from notaflow.store.db import create_engine, migrate
from notaflow.store.deliveries import Delivery, DeliveryStore
from notaflow.store.documents import Claim, ClaimRequest, Document, DocumentStore
from notaflow.store.hooks import Hook, HookStore, TooManyHooks
from notaflow.store.invoices import (
    BillingConfigStore,
    DunningStore,
    Invoice,
    InvoiceDeliveryStore,
    InvoiceStore,
)
from notaflow.store.retries import RetryLedger, RetryState
from notaflow.store.tenants import Tenant, TenantStore

__all__ = [
    "BillingConfigStore",
    "Claim",
    "ClaimRequest",
    "Delivery",
    "DeliveryStore",
    "Document",
    "DocumentStore",
    "DunningStore",
    "Hook",
    "HookStore",
    "Invoice",
    "InvoiceDeliveryStore",
    "InvoiceStore",
    "RetryLedger",
    "RetryState",
    "Tenant",
    "TenantStore",
    "TooManyHooks",
    "create_engine",
    "migrate",
]
