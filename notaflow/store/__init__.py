"""State: documents with their status history, tenants and credentials, blobs."""

from notaflow.store.db import create_engine, migrate
from notaflow.store.documents import Claim, ClaimRequest, Document, DocumentStore
from notaflow.store.tenants import Tenant, TenantStore

__all__ = [
    "Claim",
    "ClaimRequest",
    "Document",
    "DocumentStore",
    "Tenant",
    "TenantStore",
    "create_engine",
    "migrate",
]
