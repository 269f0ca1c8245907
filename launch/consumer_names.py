"""The consumers notaflow ships, by name: the one list the CLI (`notaflow consume <name>`),
the dev stack and the Helm chart's values.schema.json (`consumers` keys) agree on.

Kept in a module of its own, free of imports, so the CLI can build its parser without loading
the consumers; tests/helm checks the chart's schema against it.
"""

from __future__ import annotations

CONSUMERS: tuple[str, ...] = ("emission", "cancellation", "notification", "billing")
