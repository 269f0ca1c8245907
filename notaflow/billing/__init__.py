"""Billing rules, pure: no I/O; the store, the ingress and the consumers call these. One module
per job, the package's names re-exported here (`from notaflow import billing as b`):

- `events`: invoice events — validation, normalization and their precedence (`should_apply`);
- `values`: amounts, dates and Brasília's day, as the events carry them;
- `formatting`: values written for a Brazilian reader (R$, dd/mm/yyyy, CPF/CNPJ);
- `mail`: the invoice e-mails — default templates, [variables], rendering;
- `dunning`: reminder steps;
- `links`: signed links to one invoice.

The billing topics and CloudEvents types are part of the Kafka contract: `notaflow.topics`
(`Topics.billing_events`, `Topics.billing_commands`, `INVOICE_EVENT`, `INVOICE_MAIL`).
"""

from notaflow.billing.dunning import DEFAULT_DUNNING_STEPS, dunning_step, parse_steps
from notaflow.billing.events import (
    KINDS,
    MAX_EVENTS_PER_REQUEST,
    OPEN_STATES,
    RANK,
    STATES,
    TERMINAL,
    InvoiceEvent,
    Position,
    invoice_key,
    merge,
    normalize_event,
    should_apply,
)
from notaflow.billing.formatting import br_date, format_brl, format_document
from notaflow.billing.links import LINK_TTL, Links, sign_link, verify_link
from notaflow.billing.mail import (
    ACTIONS,
    DEFAULT_TEMPLATES,
    RenderedMail,
    Template,
    html_to_text,
    render_mail,
    render_template,
    template_variables,
)
from notaflow.billing.values import BRASILIA, amount, parse_date, parse_time, today_brasilia

__all__ = [
    "ACTIONS",
    "BRASILIA",
    "DEFAULT_DUNNING_STEPS",
    "DEFAULT_TEMPLATES",
    "KINDS",
    "LINK_TTL",
    "MAX_EVENTS_PER_REQUEST",
    "OPEN_STATES",
    "RANK",
    "STATES",
    "TERMINAL",
    "InvoiceEvent",
    "Links",
    "Position",
    "RenderedMail",
    "Template",
    "amount",
    "br_date",
    "dunning_step",
    "format_brl",
    "format_document",
    "html_to_text",
    "invoice_key",
    "merge",
    "normalize_event",
    "parse_date",
    "parse_steps",
    "parse_time",
    "render_mail",
    "render_template",
    "should_apply",
    "sign_link",
    "template_variables",
    "today_brasilia",
    "verify_link",
]
