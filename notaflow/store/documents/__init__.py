"""Documents (one row per tenant + kind + ref) and their status history, in layers:

- `model`: Document, Claim, ClaimRequest, and rows into Documents;
- `facade`: DocumentStore, what the rest of notaflow calls; it groups concurrent calls into
  batches (`notaflow.batcher`) and hands each batch to a driver layer;
- `sqlite`, `postgres`: one module per driver layer, each batch's statements below SQLAlchemy;
- `batches`: the batched calls as the driver layers receive them.

The statuses and which may follow which are `notaflow.lifecycle`'s.
"""

from notaflow.store.documents.facade import DocumentStore
from notaflow.store.documents.model import Claim, ClaimRequest, Document

__all__ = ["Claim", "ClaimRequest", "Document", "DocumentStore"]
