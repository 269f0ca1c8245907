"""Micro benchmark of `normalize_nfse`, the ingress hot path.

Run: bin/bench validation

Measures documents/s of `normalize_nfse` on seed 001's JSON example (with a valid prestador
CNPJ) against `json.loads` of the same body, the work every request does anyway, and prints
the ratio. Also times the invalid path (detailed errors), which only bad requests pay.
Each figure is the best of a few rounds, so a noisy neighbour does not drag it down.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notaflow.errors import InvalidDocument
from notaflow.nfse import normalize_nfse
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs

BODY = json.dumps(
    with_valid_cnpjs(JSON_EXAMPLE),
    ensure_ascii=False,
)

ROUNDS = 5
SECONDS_PER_ROUND = 0.5


def per_second(work: Callable[[], object]) -> float:
    """Best rate over ROUNDS rounds of about SECONDS_PER_ROUND each."""
    batch = 1
    while True:  # size a batch so that one round lasts about SECONDS_PER_ROUND
        start = time.perf_counter()
        for _ in range(batch):
            work()
        elapsed = time.perf_counter() - start
        if elapsed > SECONDS_PER_ROUND / 10:
            break
        batch *= 2
    batch = max(1, int(batch * SECONDS_PER_ROUND / elapsed))
    best = 0.0
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(batch):
            work()
        best = max(best, batch / (time.perf_counter() - start))
    return best


def main() -> None:
    parsed = json.loads(BODY)
    normalize_nfse(parsed)  # fail fast if the example stopped being valid

    invalid = json.loads(BODY)
    invalid["servico"]["valor_servicos"] = "1,00"

    def normalize_invalid() -> None:
        with contextlib.suppress(InvalidDocument):
            normalize_nfse(invalid)

    baseline = per_second(lambda: json.loads(BODY))
    valid = per_second(lambda: normalize_nfse(parsed))
    both = per_second(lambda: normalize_nfse(json.loads(BODY)))
    rejected = per_second(normalize_invalid)

    print(f"body: {len(BODY.encode())} bytes (seed 001 JSON example, valid CNPJ)")
    print(f"json.loads                     {baseline:12,.0f} docs/s")
    print(f"normalize_nfse (valid)         {valid:12,.0f} docs/s")
    print(f"json.loads + normalize_nfse    {both:12,.0f} docs/s")
    print(f"normalize_nfse (invalid)       {rejected:12,.0f} docs/s")
    print(f"normalize_nfse / json.loads    {valid / baseline:12.2f}x the throughput")


if __name__ == "__main__":
    main()
