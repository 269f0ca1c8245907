"""The consumer's operator view `GET /backlog` on its health port (issue 15)."""

from __future__ import annotations

import json

from notaflow.consumers.fairness import backlog_view
from notaflow.health import HealthServer


def test_the_health_port_answers_the_backlog_view() -> None:
    detail = {"acme": (120, 30)}
    server = HealthServer(
        "127.0.0.1",
        0,
        lambda: True,
        views={b"/backlog": lambda: backlog_view(detail, {"acme": 100 / 60}.get)},
    )
    status, body, ctype = server.respond(b"GET /backlog HTTP/1.1")
    assert (status, ctype) == (200, "application/json")
    (acme,) = json.loads(body)["tenants"]
    assert acme == {
        "tenant": "acme",
        "queued": 120,
        "running": 30,
        "credits_per_second": 1.667,
        "drains_in_seconds": 90.0,
    }
    assert server.respond(b"GET /nothing HTTP/1.1")[0] == 404
    assert server.respond(b"GET /healthz HTTP/1.1")[0] == 200
